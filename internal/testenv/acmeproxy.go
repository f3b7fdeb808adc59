package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"
)

// acmeProxy is a TLS reverse proxy, in the test process, in front of an
// ACME server (Pebble, the Caddy CA) that records every order the server
// creates, as seen in its newOrder responses: the order's ID, its
// identifiers and the account that placed it. It keeps the client's Host
// header, so every URL the server hands out points at the proxy too.
type acmeProxy struct {
	newOrderPath string          // the path of the server's newOrder URL
	backend      *http.Transport // the proxy's transport to the server
	handler      http.Handler
	tlsConfig    *tls.Config
	errLog       io.Writer // where the proxy's errors go
	logger       *log.Logger

	mu     sync.Mutex
	srv    *http.Server // the proxy's server, nil while stopped
	orders []PebbleOrder
}

// newACMEProxy returns a proxy (not serving yet) that presents cert to
// clients and passes their requests on to target (scheme and host of the
// ACME server, whose certificate must verify against roots). Its errors,
// and newOrder responses it cannot parse, are written to errLog with the
// prefix "testenv proxy: ".
func newACMEProxy(target *url.URL, newOrderPath string, cert tls.Certificate, roots *x509.CertPool, errLog io.Writer) *acmeProxy {
	p := &acmeProxy{
		newOrderPath: newOrderPath,
		backend: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: roots},
			DisableCompression:  true,
			MaxIdleConnsPerHost: 256, // bursts of orders: no new TLS connection per request
		},
		tlsConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		errLog:    errLog,
		logger:    log.New(errLog, "testenv proxy: ", log.LstdFlags),
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			// Keep the client's Host: the ACME server builds every URL
			// it returns (and Pebble checks every JWS "url") from it, so
			// they all point at the proxy.
			r.Out.Host = r.In.Host
		},
		Transport:      p.backend,
		ModifyResponse: p.record,
		ErrorLog:       p.logger,
		// without a pool, every response costs a new 32 KiB buffer: in a
		// burst of orders, garbage in the process of the client measured
		BufferPool: new(proxyBuffers),
	}
	p.handler = p.noteAccount(rp)
	return p
}

// serve starts serving on addr (host:port; port 0 for any free one) and
// returns the address it listens on.
func (p *acmeProxy) serve(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{
		Handler:           p.handler,
		TLSConfig:         p.tlsConfig,
		ErrorLog:          p.logger,
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	p.mu.Lock()
	p.srv = srv
	p.mu.Unlock()
	return ln.Addr().String(), nil
}

// stop closes the proxy's listener and its client connections (clients
// get "connection refused", as from a server that is down), then the idle
// connections to the server. serve starts it again; the orders recorded
// so far are kept. stop is safe to call more than once.
func (p *acmeProxy) stop() {
	p.mu.Lock()
	srv := p.srv
	p.srv = nil
	p.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
	p.backend.CloseIdleConnections()
}

// orderAccountKey is the context key under which noteAccount passes the
// account URL of a newOrder request to record.
type orderAccountKey struct{}

// noteAccount reads the account URL (the JWS "kid") of newOrder requests
// and puts it in the request's context, which the proxied request (seen
// again by record) keeps.
func (p *acmeProxy) noteAccount(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == p.newOrderPath {
			body, err := io.ReadAll(r.Body)
			r.Body.Close()
			r.Body = io.NopCloser(bytes.NewReader(body))
			if err == nil {
				if kid := jwsKeyID(body); kid != "" {
					r = r.WithContext(context.WithValue(r.Context(), orderAccountKey{}, kid))
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// jwsKeyID returns the "kid" of a flattened JWS's protected header, or "".
func jwsKeyID(body []byte) string {
	var jws struct {
		Protected string `json:"protected"`
	}
	if json.Unmarshal(body, &jws) != nil {
		return ""
	}
	header, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(jws.Protected, "="))
	if err != nil {
		return ""
	}
	var h struct {
		KID string `json:"kid"`
	}
	if json.Unmarshal(header, &h) != nil {
		return ""
	}
	return h.KID
}

// record notes the order in a successful newOrder response.
func (p *acmeProxy) record(resp *http.Response) error {
	req := resp.Request
	if req == nil || req.Method != http.MethodPost || req.URL.Path != p.newOrderPath ||
		resp.StatusCode != http.StatusCreated {
		return nil
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return err
	}
	var order struct {
		Identifiers []struct {
			Value string `json:"value"`
		} `json:"identifiers"`
	}
	rec := PebbleOrder{}
	rec.Account, _ = req.Context().Value(orderAccountKey{}).(string)
	if loc, err := url.Parse(resp.Header.Get("Location")); err == nil {
		rec.ID = path.Base(loc.Path)
	}
	if err := json.Unmarshal(body, &order); err != nil {
		// Still count it: the server created an order.
		fmt.Fprintf(p.errLog, "testenv proxy: cannot parse newOrder response %q: %v\n", body, err)
	}
	for _, id := range order.Identifiers {
		rec.Identifiers = append(rec.Identifiers, id.Value)
	}
	p.mu.Lock()
	p.orders = append(p.orders, rec)
	p.mu.Unlock()
	return nil
}

// awaitLogged returns logged(), the number of orders counted in the
// server's log, once that accounts for every order the proxy has already
// passed back to a client, or after 5s. The log reaches the test
// asynchronously; a client that has received its order is therefore
// always counted.
func (p *acmeProxy) awaitLogged(logged func() int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := logged()
		if n >= p.count() || time.Now().After(deadline) {
			return n
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// count returns the number of orders recorded so far.
func (p *acmeProxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.orders)
}

// ordersFor returns the number of orders recorded so far whose identifiers
// include name (a DNS name, compared case-insensitively, or an IP address).
func (p *acmeProxy) ordersFor(name string) int {
	want := normalizeIdentifier(name)
	n := 0
	for _, rec := range p.list() {
		for _, id := range rec.Identifiers {
			if normalizeIdentifier(id) == want {
				n++
				break
			}
		}
	}
	return n
}

// list returns (copies of) the orders recorded so far, oldest first.
func (p *acmeProxy) list() []PebbleOrder {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PebbleOrder, len(p.orders))
	for i, rec := range p.orders {
		out[i] = PebbleOrder{ID: rec.ID, Identifiers: append([]string(nil), rec.Identifiers...), Account: rec.Account}
	}
	return out
}

func normalizeIdentifier(s string) string {
	if ip := net.ParseIP(s); ip != nil {
		return ip.String()
	}
	return strings.ToLower(strings.TrimSuffix(s, "."))
}

// proxyBuffers is the proxy's pool of copy buffers.
type proxyBuffers struct{ pool sync.Pool }

func (b *proxyBuffers) Get() []byte {
	if buf, ok := b.pool.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, 32<<10)
}

func (b *proxyBuffers) Put(buf []byte) { b.pool.Put(&buf) }
