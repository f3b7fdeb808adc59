package testenv

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CaddyCAOptions configures StartCaddyCA.
type CaddyCAOptions struct {
	// Lifetime is the lifetime of the certificates the CA issues. Zero
	// means 90 days, as a public CA's; acme_server's own default, 12
	// hours, would be within any usual renewal threshold at once.
	Lifetime time.Duration

	// TXTResolver, if set, is the host:port of the DNS server acme_server
	// looks up the TXT records of DNS-01 challenges with (its `resolvers`
	// field), e.g. a DNSServer's Addr, for a DNS-01 test whose client
	// writes the records there. Empty means the CA's own
	// pebble-challtestsrv (CaddyCA.DNSServer). HTTP-01 validation resolves
	// names through CaddyCA.DNSServer either way (SetA).
	TXTResolver string
}

// CaddyCA is a running Caddy whose `acme_server` handler is an ACME CA (the
// `pki` app's "local" CA, smallstep's library), a second real CA beside
// Pebble. It is stopped when the test that started it finishes.
//
// acme_server validates HTTP-01 on port 80 of the address a name resolves
// to, and only there. Names resolve through a pebble-challtestsrv DNS
// server the CA is pointed at (SetA); a name without an A record set does
// not resolve. Give each test its own address with LoopbackHTTPAddr.
//
// Clients reach the ACME API through Directory, which is served by a
// recording reverse proxy in the test process (as Pebble's DirectoryURL
// is): it notes the identifiers of every order (OrdersFor). Its TLS
// certificate is signed by the CA's own intermediate, so RootFile is the
// only trust anchor a client needs.
//
// The Caddy binary is built once per test process (go build, see
// caddyBinary) from a main package made of Caddy's standard modules and a
// hook that sends the process's DNS lookups to the test DNS server:
// acme_server's `resolvers` field (which is set too, to the same server
// unless CaddyCAOptions.TXTResolver names another) applies only to the
// TXT lookups of DNS-01, while HTTP-01 validation resolves names with Go's
// default resolver.
type CaddyCA struct {
	// Directory is the ACME directory URL,
	// https://127.0.0.1:<port>/acme/local/directory (through the proxy).
	Directory string

	// RootFile is the path of the CA's root certificate (PEM),
	// <Storage>/pki/authorities/local/root.crt, e.g. for the
	// trusted_roots of an ACME client. It exists once StartCaddyCA
	// returns and stays the same across Stop and Start.
	RootFile string

	// Storage is the root of the CA's file_system storage.
	Storage string

	// ConfigFile is the path of the CA's JSON config.
	ConfigFile string

	// DNSServer is the host:port of the DNS server (pebble-challtestsrv)
	// the CA resolves names with.
	DNSServer string

	// ChallSrvURL is the base URL of pebble-challtestsrv's management
	// API, http://127.0.0.1:<port> (no trailing slash).
	ChallSrvURL string

	bin       string
	env       []string
	caddyLog  *logBuffer // the CA's output across restarts, and the proxy's errors
	challLog  *logBuffer
	caAddr    string // 127.0.0.1:<port> of the Caddy process
	proxyAddr string // 127.0.0.1:<port> of the recording proxy
	rootPool  *x509.CertPool
	proxy     *acmeProxy // the recording proxy, once StartCaddyCA has set it up

	mu        sync.Mutex
	proc      *process // the running Caddy, nil while stopped
	logOrders int      // orders counted in the CA's access log
}

// CAOrder is an order a test CA created, as its recording proxy saw it in
// the newOrder response (the same fields as Pebble's).
type CAOrder = PebbleOrder

// CaddyCAPathPrefix is the path under which acme_server serves the "local"
// CA's ACME API.
const CaddyCAPathPrefix = "/acme/local/"

// caddyCANewOrderPath is the path of the "local" CA's newOrder URL.
const caddyCANewOrderPath = CaddyCAPathPrefix + "new-order"

// caddyCADNSEnv is the environment variable that makes the CA binary send
// every DNS lookup to the given host:port (see caddyCAMain).
const caddyCADNSEnv = "CADDY_ACME_TESTENV_DNS"

// StartCaddyCA starts pebble-challtestsrv and a Caddy acme_server CA on
// free 127.0.0.1 ports, and the recording proxy in front of the CA, and
// waits until the directory answers. The first call in a test process
// builds the Caddy binary (a few seconds when the Go build cache is warm).
// The test is skipped (or, with CI=true, failed) if pebble-challtestsrv or
// the go command is missing; it fails if the build fails or the servers do
// not come up. Everything is stopped in t.Cleanup.
func StartCaddyCA(t testing.TB, opts CaddyCAOptions) *CaddyCA {
	t.Helper()
	if opts.Lifetime < 0 {
		t.Fatalf("testenv: StartCaddyCA: negative Lifetime")
	}
	if opts.Lifetime == 0 {
		opts.Lifetime = 90 * 24 * time.Hour
	}
	challBin := FindBinary(t, "pebble-challtestsrv")
	bin := caddyBinary(t)

	dir := t.TempDir()
	ca := &CaddyCA{
		Storage:    filepath.Join(dir, "storage"),
		ConfigFile: filepath.Join(dir, "caddy.json"),
		bin:        bin,
		caddyLog:   &logBuffer{},
	}
	ca.RootFile = filepath.Join(ca.Storage, "pki", "authorities", "local", "root.crt")
	ca.caddyLog.onLine = ca.onCaddyLine
	home := filepath.Join(dir, "home")
	// acme_server keeps its database under caddy.AppDataDir(), not in the
	// storage: a home of its own keeps CAs apart and lets a restart find it.
	ca.env = []string{
		"HOME=" + home,
		"XDG_DATA_HOME=" + filepath.Join(home, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, "config"),
	}

	var err error
	for range 3 {
		if err = ca.startDNS(t, challBin); !errors.Is(err, errPortInUse) {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: starting pebble-challtestsrv: %v", err)
	}
	ca.env = append(ca.env, caddyCADNSEnv+"="+ca.DNSServer)

	t.Cleanup(ca.Stop)
	for range 3 {
		ca.caAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
		if err = ca.writeConfig(opts, FreePort(t)); err != nil {
			t.Fatalf("testenv: writing the Caddy CA config: %v", err)
		}
		if err = ca.startCaddy(); !errors.Is(err, errPortInUse) {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: starting the Caddy CA: %v", err)
	}
	if err := ca.setUpProxy(); err != nil {
		t.Fatalf("testenv: the Caddy CA's proxy: %v", err)
	}
	for range 3 {
		ca.proxyAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
		if _, err = ca.proxy.serve(ca.proxyAddr); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: starting the Caddy CA's proxy: %v", err)
	}
	ca.Directory = "https://" + ca.proxyAddr + CaddyCAPathPrefix + "directory"
	return ca
}

// startDNS starts pebble-challtestsrv on fresh ports, with no default
// address: a name resolves only once SetA gave it one.
func (ca *CaddyCA) startDNS(t testing.TB, challBin string) (err error) {
	ca.DNSServer = net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	ca.ChallSrvURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	ca.challLog = &logBuffer{}
	chall, err := startChallSrv(challBin, ca.DNSServer, ca.ChallSrvURL, "", ca.challLog)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			chall.stop()
		}
	}()
	// Ready once a record set through the management API resolves (UDP,
	// as Go's resolver asks first).
	const probe, probeIP = "testenv-probe.example", "127.0.0.1"
	resolver := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, ca.DNSServer)
		},
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := challSrvFailed(chall); err != nil {
			return err
		}
		err = ca.challSrv("/add-a", map[string]any{"host": probe, "addresses": []string{probeIP}})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			var addrs []string
			addrs, err = resolver.LookupHost(ctx, probe)
			cancel()
			if err == nil && (len(addrs) != 1 || addrs[0] != probeIP) {
				err = fmt.Errorf("probe name resolved to %v, want %s", addrs, probeIP)
			}
		}
		if err == nil {
			t.Cleanup(chall.stop)
			return nil
		}
		if time.Now().After(deadline) {
			return processFailure(chall, "did not become ready in 15s", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// challSrv POSTs body as JSON to pebble-challtestsrv's management API.
func (ca *CaddyCA) challSrv(p string, body any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ca.ChallSrvURL+p, bytes.NewReader(data))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s: %s", p, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// writeConfig writes the CA's Caddy config for ca.caAddr. httpPort is the
// http app's http_port: no listener uses it, but Caddy serves plain HTTP
// on a listener whose port is http_port, so it must be another one than
// the CA's, and it must not be 80 either.
func (ca *CaddyCA) writeConfig(opts CaddyCAOptions, httpPort int) error {
	_, port, err := net.SplitHostPort(ca.caAddr)
	if err != nil {
		return err
	}
	httpsPort, err := strconv.Atoi(port)
	if err != nil {
		return err
	}
	txtResolver := ca.DNSServer
	if opts.TXTResolver != "" {
		txtResolver = opts.TXTResolver
	}
	// acme_server refuses a lifetime that is not below the intermediate's.
	intermediate := max(365*24*time.Hour, 2*opts.Lifetime)
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": ca.Storage},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level":   "INFO",
			"writer":  map[string]any{"output": "stderr"},
			"encoder": map[string]any{"format": "json"},
		}}},
		"apps": map[string]any{
			"pki": map[string]any{"certificate_authorities": map[string]any{"local": map[string]any{
				"install_trust":         false,
				"intermediate_lifetime": intermediate.String(),
			}}},
			"tls": map[string]any{
				// the HTTPS listener's own certificate, from the same CA
				"certificates": map[string]any{"automate": []string{"127.0.0.1"}},
				"automation": map[string]any{"policies": []any{map[string]any{
					"subjects": []string{"127.0.0.1"},
					"issuers":  []any{map[string]any{"module": "internal", "ca": "local"}},
				}}},
			},
			"http": map[string]any{
				"http_port":    httpPort,
				"https_port":   httpsPort,
				"grace_period": "1s",
				"servers": map[string]any{"ca": map[string]any{
					"listen":    []string{ca.caAddr},
					"protocols": []string{"h1", "h2"},
					"routes": []any{map[string]any{"handle": []any{map[string]any{
						"handler":   "acme_server",
						"ca":        "local",
						"lifetime":  opts.Lifetime.String(),
						"resolvers": []string{txtResolver},
					}}}},
					"tls_connection_policies": []any{map[string]any{"default_sni": "127.0.0.1"}},
					"automatic_https":         map[string]any{"disable": true},
					"logs":                    map[string]any{}, // access logs: Orders counts them
				}},
			},
		},
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(ca.ConfigFile, data, 0o600)
}

// startCaddy starts the Caddy process and waits until its directory
// answers over TLS verified against the CA's root (created by the first
// start).
func (ca *CaddyCA) startCaddy() (err error) {
	proc, err := startProcess("caddy", ca.bin, []string{"run", "--config", ca.ConfigFile}, ca.env, ca.caddyLog)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			proc.stop()
		}
	}()
	const timeout = 60 * time.Second
	deadline := time.Now().Add(timeout)
	direct := "https://" + ca.caAddr + CaddyCAPathPrefix + "directory"
	var lastErr error
	for {
		if ok, werr := proc.exited(); ok {
			return processFailure(proc, "exited during start-up", werr)
		}
		if lastErr = ca.probeDirectory(direct); lastErr == nil {
			ca.mu.Lock()
			ca.proc = proc
			ca.mu.Unlock()
			return nil
		}
		if strings.Contains(proc.out.String(), "address already in use") {
			return processFailure(proc, "could not bind", lastErr)
		}
		if time.Now().After(deadline) {
			return processFailure(proc, fmt.Sprintf("did not answer at %s within %s", direct, timeout), lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// probeDirectory fetches the directory at u and checks its newOrder URL.
func (ca *CaddyCA) probeDirectory(u string) error {
	if ca.rootPool == nil {
		pemBytes, err := os.ReadFile(ca.RootFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("no certificate in %s", ca.RootFile)
		}
		ca.rootPool = pool
	}
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.rootPool}},
		Timeout:   2 * time.Second,
	}
	defer client.CloseIdleConnections()
	resp, err := client.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, bytes.TrimSpace(body))
	}
	var dir struct {
		NewOrder string `json:"newOrder"`
	}
	if err := json.Unmarshal(body, &dir); err != nil {
		return fmt.Errorf("GET %s: %w: %s", u, err, body)
	}
	if no, err := url.Parse(dir.NewOrder); err != nil || no.Path != caddyCANewOrderPath {
		return fmt.Errorf("GET %s: newOrder is %q, want the path %s", u, dir.NewOrder, caddyCANewOrderPath)
	}
	return nil
}

// onCaddyLine counts the CA's access log lines of orders it created.
func (ca *CaddyCA) onCaddyLine(line string) {
	if !strings.Contains(line, `"http.log.access`) || !strings.Contains(line, "new-order") {
		return
	}
	var entry struct {
		Logger  string `json:"logger"`
		Request struct {
			Method string `json:"method"`
			URI    string `json:"uri"`
		} `json:"request"`
		Status int `json:"status"`
	}
	if json.Unmarshal([]byte(line), &entry) != nil || !strings.HasPrefix(entry.Logger, "http.log.access") {
		return
	}
	if entry.Request.Method == http.MethodPost && entry.Request.URI == caddyCANewOrderPath &&
		entry.Status == http.StatusCreated {
		ca.mu.Lock()
		ca.logOrders++
		ca.mu.Unlock()
	}
}

// setUpProxy makes the recording proxy (not serving yet), with a TLS
// certificate for 127.0.0.1 signed by the CA's intermediate (read from its
// storage).
func (ca *CaddyCA) setUpProxy() error {
	authority := filepath.Dir(ca.RootFile)
	interPEM, err := os.ReadFile(filepath.Join(authority, "intermediate.crt"))
	if err != nil {
		return err
	}
	interKeyPEM, err := os.ReadFile(filepath.Join(authority, "intermediate.key"))
	if err != nil {
		return err
	}
	inter, err := tls.X509KeyPair(interPEM, interKeyPEM)
	if err != nil {
		return fmt.Errorf("the CA's intermediate: %w", err)
	}
	interCert, err := x509.ParseCertificate(inter.Certificate[0])
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	notAfter := now.Add(7 * 24 * time.Hour)
	if interCert.NotAfter.Before(notAfter) {
		notAfter = interCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: "testenv Caddy CA proxy"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, interCert, &key.PublicKey, inter.PrivateKey)
	if err != nil {
		return err
	}
	cert := tls.Certificate{Certificate: [][]byte{der, inter.Certificate[0]}, PrivateKey: key}
	target := &url.URL{Scheme: "https", Host: ca.caAddr}
	ca.proxy = newACMEProxy(target, caddyCANewOrderPath, cert, ca.rootPool, ca.caddyLog)
	return nil
}

// Stop stops the CA: the proxy behind Directory closes (clients get
// "connection refused", as from a CA that is down) and the Caddy process
// is stopped by PID. The DNS server keeps running. Start starts it again.
// Stop is safe to call more than once; the test's cleanup calls it.
func (ca *CaddyCA) Stop() {
	ca.mu.Lock()
	proc := ca.proc
	ca.proc = nil
	ca.mu.Unlock()
	if ca.proxy != nil {
		ca.proxy.stop()
	}
	if proc != nil {
		proc.stop()
	}
	if ca.proxy != nil {
		// again: connections that requests in flight at the proxy's
		// close gave back while the Caddy process was still up
		ca.proxy.backend.CloseIdleConnections()
	}
}

// Start starts a stopped CA again with the same ports, config, storage
// (root, intermediate) and ACME database (accounts, orders), and waits
// until Directory answers. Orders and OrdersFor keep counting.
func (ca *CaddyCA) Start(t testing.TB) {
	t.Helper()
	ca.mu.Lock()
	running := ca.proc != nil
	ca.mu.Unlock()
	if running {
		t.Fatalf("testenv: CaddyCA.Start: the CA is running")
	}
	fmt.Fprintf(ca.caddyLog, "\n--- testenv: starting the Caddy CA again ---\n")
	if err := ca.startCaddy(); err != nil {
		t.Fatalf("testenv: restarting the Caddy CA: %v", err)
	}
	if _, err := ca.proxy.serve(ca.proxyAddr); err != nil {
		t.Fatalf("testenv: restarting the Caddy CA's proxy on %s: %v", ca.proxyAddr, err)
	}
}

// SetA makes name resolve to ip (replacing its A records) in the DNS
// server the CA validates with, so that HTTP-01 validation of name
// connects to ip:80. ip must be an IPv4 loopback address: the tests never
// make a CA validate against another host.
func (ca *CaddyCA) SetA(t testing.TB, name, ip string) {
	t.Helper()
	if parsed := net.ParseIP(ip); parsed == nil || parsed.To4() == nil || !parsed.IsLoopback() {
		t.Fatalf("testenv: SetA(%s, %s): only IPv4 loopback addresses (127.0.0.0/8) are allowed", name, ip)
	}
	if err := ca.challSrv("/clear-a", map[string]any{"host": name}); err != nil {
		t.Fatalf("testenv: clearing the A records of %s: %v", name, err)
	}
	if err := ca.challSrv("/add-a", map[string]any{"host": name, "addresses": []string{ip}}); err != nil {
		t.Fatalf("testenv: setting the A record of %s: %v", name, err)
	}
}

// Orders returns the number of orders the CA has created so far, counted
// from its access log (POST .../new-order answered 201). The log reaches
// the test asynchronously, so it first waits (up to 5s) until the log
// accounts for every order the proxy has already passed back to a client.
func (ca *CaddyCA) Orders() int {
	return ca.proxy.awaitLogged(func() int {
		ca.mu.Lock()
		defer ca.mu.Unlock()
		return ca.logOrders
	})
}

// OrdersFor returns the number of orders the CA has created so far whose
// identifiers include name (a DNS name, compared case-insensitively, or an
// IP address), as seen in its newOrder responses by the proxy.
func (ca *CaddyCA) OrdersFor(name string) int { return ca.proxy.ordersFor(name) }

// OrderList returns the orders the CA has created so far, oldest first,
// as seen in its newOrder responses by the proxy.
func (ca *CaddyCA) OrderList() []CAOrder { return ca.proxy.list() }

// Log returns the CA's output so far (with the proxy's errors and a line
// at each restart), followed by pebble-challtestsrv's, for debugging.
func (ca *CaddyCA) Log() string {
	return ca.caddyLog.String() + "\n--- pebble-challtestsrv ---\n" + ca.challLog.String()
}

// RootPool returns a pool holding the CA's root certificate.
func (ca *CaddyCA) RootPool(t testing.TB) *x509.CertPool {
	t.Helper()
	pemBytes, err := os.ReadFile(ca.RootFile)
	if err != nil {
		t.Fatalf("testenv: reading the Caddy CA's root: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("testenv: no certificate in %s", ca.RootFile)
	}
	return pool
}

// Client returns a new HTTP client that trusts the CA's root, for talking
// to the ACME API.
func (ca *CaddyCA) Client() *http.Client {
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.rootPool}},
		Timeout:   30 * time.Second,
	}
}

// LoopbackHTTPAddr returns an IPv4 loopback address 127.0.0.N (N from 2
// up; no port) whose port 80 could be bound at the time of the call, and
// that has no TCP sockets on that port left from earlier tests, for a
// test's HTTP-01 listener on <address>:80 (acme_server validates on port
// 80 only). Each address is held for the test with an exclusive lock file
// in the system's temporary directory, so tests running at the same time,
// in this process or another, get different addresses. Binding port 80
// needs root (or CAP_NET_BIND_SERVICE): without it the test is skipped, or
// failed with CI=true.
func LoopbackHTTPAddr(t testing.TB) string {
	t.Helper()
	lockDir := filepath.Join(os.TempDir(), "caddy-acme-loopback")
	if err := os.MkdirAll(lockDir, 0o700); err != nil {
		t.Fatalf("testenv: LoopbackHTTPAddr: %v", err)
	}
	var lastErr error
	for n := 2; n <= 254; n++ {
		ip := "127.0.0." + strconv.Itoa(n)
		f, err := os.OpenFile(filepath.Join(lockDir, ip+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatalf("testenv: LoopbackHTTPAddr: %v", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue // another test holds it
		}
		// Closing the file releases the lock (also if the process dies).
		if hasTCPSockets(ip, 80) {
			// Binding over the TIME_WAIT connections of a previous test
			// fails now and then, although Go sets SO_REUSEADDR.
			f.Close()
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "80"))
		if err != nil {
			f.Close()
			lastErr = err
			if errors.Is(err, syscall.EACCES) {
				missing(t, fmt.Sprintf("testenv: binding %s:80 for HTTP-01 validation: %v (the tests of a CA that validates on port 80 need root or CAP_NET_BIND_SERVICE)", ip, err))
				return ""
			}
			continue
		}
		if err := ln.Close(); err != nil {
			f.Close()
			t.Fatalf("testenv: closing probe listener: %v", err)
		}
		t.Cleanup(func() { f.Close() })
		return ip
	}
	t.Fatalf("testenv: LoopbackHTTPAddr: no 127.0.0.N with a free port 80 (last error: %v)", lastErr)
	return ""
}

// hasTCPSockets reports whether the kernel has any TCP socket, in any
// state, whose local address is the IPv4 address ip and port
// (/proc/net/tcp; false where that cannot be read).
func hasTCPSockets(ip string, port int) bool {
	want := net.ParseIP(ip).To4()
	data, err := os.ReadFile("/proc/net/tcp")
	if want == nil || err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		// "0200007F:0050": the address as the host-order integer of its
		// network-order bytes, and the port, in hex
		hexAddr, hexPort, ok := strings.Cut(fields[1], ":")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(hexAddr, 16, 32)
		p, err2 := strconv.ParseUint(hexPort, 16, 16)
		if err1 != nil || err2 != nil || int(p) != port {
			continue
		}
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], uint32(a))
		if net.IP(b[:]).Equal(want) {
			return true
		}
	}
	return false
}

// missing skips the test with msg, or fails it when CI is "true" (as
// FindBinary does for a server binary that is not installed).
func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
		return
	}
	t.Skip(msg)
}

// caddyBuild is the Caddy binary built for this test process.
var caddyBuild struct {
	once sync.Once
	path string
	err  error
}

// errNoGo marks a build that could not start because the go command is
// missing.
var errNoGo = errors.New("the go command is not installed")

// caddyBinary returns the path of the Caddy binary the CA runs, building
// it on the first call in the test process (see buildCaddy). Without the
// go command the test is skipped (failed with CI=true); a failed build
// fails it.
func caddyBinary(t testing.TB) string {
	t.Helper()
	caddyBuild.once.Do(func() { caddyBuild.path, caddyBuild.err = buildCaddy() })
	if errors.Is(caddyBuild.err, errNoGo) {
		missing(t, fmt.Sprintf("testenv: building Caddy for the test CA: %v", caddyBuild.err))
		return ""
	}
	if caddyBuild.err != nil {
		t.Fatalf("testenv: building Caddy for the test CA: %v", caddyBuild.err)
	}
	return caddyBuild.path
}

// caddyCAMain is the main package of the CA's Caddy: Caddy's standard
// modules (which include the pki app and acme_server), and, when
// caddyCADNSEnv is set, every DNS lookup of the process sent to that
// server. It does not import this module's packages, so that the CA builds
// even while a change to them is half done.
const caddyCAMain = `// The main package of the tests' Caddy CA, written by internal/testenv
// (caddyca.go) and built with go build -overlay.

package main

import (
	"context"
	"net"
	"os"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func init() {
	if addr := os.Getenv("` + caddyCADNSEnv + `"); addr != "" {
		net.DefaultResolver.PreferGo = true
		net.DefaultResolver.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	}
}

func main() { caddycmd.Main() }
`

// caddyCAPackage is the directory, relative to the module root, of the
// CA's main package. It exists only in the build's overlay.
const caddyCAPackage = "internal/testenv/internal/caddyca"

// buildCaddy builds the CA's Caddy (caddyCAMain, put into the module with
// go build -overlay, so that it uses the module's own versions of Caddy
// and its dependencies) into a cache directory per module checkout:
// $CADDY_ACME_BUILD or $HOME/.cache/caddy-acme/build, then
// caddyca-<hash of the module root>. go build rewrites the binary only
// when it is out of date, so a warm build takes about a second; an
// exclusive lock file serialises test processes building at once.
func buildCaddy() (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("%w: %v", errNoGo, err)
	}
	root, err := moduleRoot(goBin)
	if err != nil {
		return "", err
	}
	base := os.Getenv("CADDY_ACME_BUILD")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		base = filepath.Join(home, ".cache", "caddy-acme", "build")
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(base, "caddyca-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // the tests' own cache directory ($CADDY_ACME_BUILD or under $HOME)
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600) //nolint:gosec // as above
	if err != nil {
		return "", err
	}
	defer lock.Close() // releases the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}

	mainFile := filepath.Join(dir, "main.go")
	if err := os.WriteFile(mainFile, []byte(caddyCAMain), 0o600); err != nil { //nolint:gosec // as above
		return "", err
	}
	overlay, err := json.Marshal(map[string]any{"Replace": map[string]string{
		filepath.Join(root, filepath.FromSlash(caddyCAPackage), "main.go"): mainFile,
	}})
	if err != nil {
		return "", err
	}
	overlayFile := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayFile, overlay, 0o600); err != nil { //nolint:gosec // as above
		return "", err
	}
	bin := filepath.Join(dir, "caddy")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-overlay", overlayFile, "-o", bin, "./"+caddyCAPackage) //nolint:gosec // the go command the tests run with, on the tests' cache directory
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}

// moduleRoot returns the directory of this module's go.mod: go env GOMOD,
// run in this source file's directory (or, when the binary was built with
// -trimpath, the test's working directory, which is in the module too).
func moduleRoot(goBin string) (string, error) {
	cmd := exec.Command(goBin, "env", "GOMOD")
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if fi, err := os.Stat(filepath.Dir(file)); err == nil && fi.IsDir() {
			cmd.Dir = filepath.Dir(file)
		}
	}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD in %q: not in a module", cmd.Dir)
	}
	return filepath.Dir(gomod), nil
}
