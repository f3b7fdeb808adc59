package caddyacme

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
	"encoding/asn1"
	"errors"
	"io"
	"math/big"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// The tests in this file run the wrapper's connection handling over real
// loopback TCP connections and real crypto/tls servers and clients, without
// Caddy; TestTLSALPNChallengeKey adds a real Pebble.

// testChallenge is a TLS-ALPN-01 challenge for name.
func testChallenge(name string) acme.Challenge {
	return acme.Challenge{
		Type:             acme.ChallengeTypeTLSALPN01,
		Token:            "token-" + name,
		KeyAuthorization: "token-" + name + ".thumbprint",
		Identifier:       acme.Identifier{Type: "dns", Value: name},
	}
}

// answerFor answers the challenge of name only.
func answerFor(t testing.TB, name string) func(string) *tls.Certificate {
	cert, err := acmez.TLSALPN01ChallengeCert(testChallenge(name))
	if err != nil {
		t.Fatal(err)
	}
	return func(n string) *tls.Certificate {
		if n == name {
			return cert
		}
		return nil
	}
}

// serveOne accepts one connection of srv in a goroutine and hands it to
// serve, then closes it; the channel gets serve's error (or Accept's).
func serveOne(srv net.Listener, serve func(net.Conn) error) <-chan error {
	done := make(chan error, 1)
	go func() {
		c, err := srv.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- serve(c)
	}()
	return done
}

// selfSigned is a certificate for name, for the TLS server behind the
// wrapper.
func selfSigned(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// recordingListener records what is read from its connections (through
// the wrapper) and hands them out on a channel.
type recordingListener struct {
	net.Listener
	conns chan *recordingConn
}

type recordingConn struct {
	net.Conn
	mu   sync.Mutex // protects read
	read bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.read.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *recordingConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.read.Bytes())
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	rc := &recordingConn{Conn: c}
	l.conns <- rc
	return rc, nil
}

// wrappedListener listens on loopback behind the wrapper with answer, and
// records what the wrapper returns.
func wrappedListener(t *testing.T, answer func(string) *tls.Certificate) *recordingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	w := &tlsALPNListener{Listener: ln, answer: answer, logger: zap.NewNop()}
	return &recordingListener{Listener: w, conns: make(chan *recordingConn, 4)}
}

// teeConn records what a client writes.
type teeConn struct {
	net.Conn
	mu      sync.Mutex // protects written
	written bytes.Buffer
}

func (c *teeConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.written.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *teeConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.written.Bytes())
}

// TestTLSALPNPassesTLSThrough runs a crypto/tls server behind the wrapper:
// ordinary handshakes, and challenge handshakes the wrapper cannot answer,
// reach it, and it reads exactly the bytes the client wrote.
func TestTLSALPNPassesTLSThrough(t *testing.T) {
	inner := selfSigned(t, "inner.example.com")
	for _, tc := range []struct {
		name       string
		serverName string
		protos     []string
	}{
		{"no alpn", "a.example.com", nil},
		{"h2", "a.example.com", []string{"h2", "http/1.1"}},
		{"acme-tls/1 among others", "a.example.com", []string{acmez.ACMETLS1Protocol, "h2"}},
		{"acme-tls/1 for a name without a challenge", "other.example.com", []string{acmez.ACMETLS1Protocol}},
		{"acme-tls/1 without sni", "", []string{acmez.ACMETLS1Protocol}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rl := wrappedListener(t, answerFor(t, "a.example.com"))
			srv := tls.NewListener(rl, &tls.Config{
				Certificates: []tls.Certificate{inner},
				NextProtos:   []string{"h2", "http/1.1", acmez.ACMETLS1Protocol},
			})
			done := serveOne(srv, func(c net.Conn) error {
				line := make([]byte, 5)
				if _, err := io.ReadFull(c, line); err != nil {
					return err
				}
				if _, err := c.Write(line); err != nil {
					return err
				}
				_, err := io.Copy(io.Discard, c) // until the client's close_notify
				return err
			})

			raw, err := net.Dial("tcp", rl.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			tee := &teeConn{Conn: raw}
			client := tls.Client(tee, &tls.Config{
				ServerName:         tc.serverName,
				NextProtos:         tc.protos,
				InsecureSkipVerify: true, //nolint:gosec // the test checks the certificate itself
			})
			if err := client.Handshake(); err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if got := client.ConnectionState().PeerCertificates[0].Raw; !bytes.Equal(got, inner.Certificate[0]) {
				t.Fatal("the server behind the wrapper did not answer")
			}
			if _, err := client.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			echo := make([]byte, 5)
			if _, err := io.ReadFull(client, echo); err != nil || string(echo) != "hello" {
				t.Fatalf("echo = %q, %v", echo, err)
			}
			client.Close()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("server: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("server did not finish")
			}
			rc := <-rl.conns
			if got, want := rc.bytes(), tee.bytes(); !bytes.Equal(got, want) {
				t.Fatalf("the server read %d bytes, the client wrote %d: not the same bytes", len(got), len(want))
			}
		})
	}
}

// TestTLSALPNAnswersChallenge: a challenge handshake for the name the
// wrapper has a challenge for gets the challenge certificate over
// acme-tls/1, and the TLS server behind the wrapper reads end of file.
func TestTLSALPNAnswersChallenge(t *testing.T) {
	const name = "a.example.com"
	rl := wrappedListener(t, answerFor(t, name))
	srv := tls.NewListener(rl, &tls.Config{Certificates: []tls.Certificate{selfSigned(t, "inner.example.com")}})
	done := serveOne(srv, func(c net.Conn) error { return c.(*tls.Conn).Handshake() })

	client, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", rl.Addr().String(), &tls.Config{
		ServerName:         "A.Example.com.",
		NextProtos:         []string{acmez.ACMETLS1Protocol},
		InsecureSkipVerify: true, //nolint:gosec // the test checks the certificate itself
	})
	if err != nil {
		t.Fatalf("challenge handshake: %v", err)
	}
	defer client.Close()
	state := client.ConnectionState()
	if state.NegotiatedProtocol != acmez.ACMETLS1Protocol {
		t.Fatalf("negotiated %q, want %s", state.NegotiatedProtocol, acmez.ACMETLS1Protocol)
	}
	checkChallengeCert(t, state.PeerCertificates[0], testChallenge(name))
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("the server behind the wrapper: handshake error %v, want io.EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server behind the wrapper did not finish")
	}
}

// idPeACMEIdentifier is the OID of the acmeIdentifier extension (RFC 8737
// §6.1).
var idPeACMEIdentifier = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}

// checkChallengeCert fails the test unless cert is the TLS-ALPN-01
// certificate of chal (RFC 8737 §3).
func checkChallengeCert(t *testing.T, cert *x509.Certificate, chal acme.Challenge) {
	t.Helper()
	if len(cert.DNSNames) != 1 || cert.DNSNames[0] != chal.Identifier.Value {
		t.Fatalf("challenge certificate names %v, want [%s]", cert.DNSNames, chal.Identifier.Value)
	}
	sum := sha256.Sum256([]byte(chal.KeyAuthorization))
	want, err := asn1.Marshal(sum[:])
	if err != nil {
		t.Fatal(err)
	}
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(idPeACMEIdentifier) {
			if !ext.Critical || !bytes.Equal(ext.Value, want) {
				t.Fatal("the acmeIdentifier extension does not hold the key authorization's digest")
			}
			return
		}
	}
	t.Fatal("challenge certificate has no acmeIdentifier extension")
}

// TestTLSALPNOddFirstRecord writes first bytes that are no ClientHello (or
// a huge or truncated one) and closes: the wrapper returns exactly them,
// without answering or panicking.
func TestTLSALPNOddFirstRecord(t *testing.T) {
	hello := clientHelloRecord(t, &tls.Config{ServerName: "a.example.com", NextProtos: []string{acmez.ACMETLS1Protocol}})
	huge := append([]byte{22, 3, 1, 0xff, 0xff}, bytes.Repeat([]byte("acme-tls/1"), 7000)...)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"http request", []byte("GET /acme-tls/1 HTTP/1.1\r\nHost: a.example.com\r\n\r\n")},
		{"short header", []byte{22, 3}},
		{"huge record", huge},
		{"truncated hello", hello[:len(hello)-10]},
		{"hello with a wrong length", append(append([]byte{}, hello[:3]...), append([]byte{0, 100}, hello[5:]...)...)},
		{"garbage handshake record", append([]byte{22, 3, 1, 0, 14}, []byte("xxxxacme-tls/1")...)},
		{"alert record", append([]byte{21, 3, 3, 0, 10}, []byte("acme-tls/1")...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rl := wrappedListener(t, answerFor(t, "a.example.com"))
			got := make(chan []byte, 1)
			go func() {
				c, err := rl.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(c)
				got <- b
			}()
			raw, err := net.Dial("tcp", rl.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			if _, err := raw.Write(tc.data); err != nil {
				t.Fatal(err)
			}
			_ = raw.(*net.TCPConn).CloseWrite()
			select {
			case b := <-got:
				if !bytes.Equal(b, tc.data) {
					t.Fatalf("read %d bytes through the wrapper, want the %d written", len(b), len(tc.data))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no result")
			}
		})
	}
}

// TestTLSALPNChallengeHello checks which ClientHellos are challenges.
func TestTLSALPNChallengeHello(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		want string // "" for none
	}{
		{"challenge", &tls.Config{ServerName: "A.Example.COM.", NextProtos: []string{acmez.ACMETLS1Protocol}}, "a.example.com"},
		{"tls 1.2 only", &tls.Config{ServerName: "a.example.com", NextProtos: []string{acmez.ACMETLS1Protocol}, MaxVersion: tls.VersionTLS12}, "a.example.com"},
		{"two protocols", &tls.Config{ServerName: "a.example.com", NextProtos: []string{acmez.ACMETLS1Protocol, "h2"}}, ""},
		{"h2", &tls.Config{ServerName: "a.example.com", NextProtos: []string{"h2"}}, ""},
		{"reverse dns name of an ip", &tls.Config{ServerName: "1.0.0.127.in-addr.arpa", NextProtos: []string{acmez.ACMETLS1Protocol}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.InsecureSkipVerify = true //nolint:gosec // never connects
			got := challengeHello(clientHelloRecord(t, tc.cfg))
			switch {
			case tc.want == "" && got != nil:
				t.Fatalf("challenge for %q, want none", got.name)
			case tc.want != "" && (got == nil || got.name != tc.want):
				t.Fatalf("challenge %+v, want for %q", got, tc.want)
			}
		})
	}
}

// captureConn records what a TLS client writes and reads end of file.
type captureConn struct {
	replayConn
	written bytes.Buffer
}

func (c *captureConn) Write(p []byte) (int, error) { return c.written.Write(p) }

// clientHelloRecord is the first record crypto/tls's client sends with cfg.
func clientHelloRecord(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c := new(captureConn)
	_ = tls.Client(c, cfg).Handshake()
	rec, err := readFirstRecord(bytes.NewReader(c.written.Bytes()))
	if err != nil {
		t.Fatalf("reading the client's first record: %v", err)
	}
	return rec
}

// FuzzTLSALPNFirstRecord feeds any first bytes to the wrapper's
// connection: it either answers (only for a ClientHello offering
// acme-tls/1) or returns exactly the bytes, and never panics.
func FuzzTLSALPNFirstRecord(f *testing.F) {
	for _, cfg := range []*tls.Config{
		{ServerName: "a.example.com", NextProtos: []string{acmez.ACMETLS1Protocol}},
		{ServerName: "a.example.com", NextProtos: []string{acmez.ACMETLS1Protocol}, MaxVersion: tls.VersionTLS12},
		{ServerName: "b.example.com", NextProtos: []string{acmez.ACMETLS1Protocol}},
		{ServerName: "a.example.com", NextProtos: []string{"h2", acmez.ACMETLS1Protocol}},
		{ServerName: "a.example.com"},
	} {
		f.Add(clientHelloRecord(f, cfg))
	}
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{22, 3, 1, 0xff, 0xff, 'a', 'c', 'm', 'e'})
	answer := answerFor(f, "a.example.com")
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &tlsALPNConn{Conn: &replayConn{buf: bytes.Clone(data)}, answer: answer, logger: zap.NewNop()}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read error %v", err)
		}
		if c.answered {
			if len(got) != 0 || !bytes.Contains(data, acmeTLS1) {
				t.Fatal("answered a connection without acme-tls/1 in its first bytes")
			}
			return
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read %q, want %q", got, data)
		}
	})
}

// recordingStorage records the values stored under challenge_tokens keys.
type recordingStorage struct {
	certmagic.Storage
	mu     sync.Mutex // protects tokens
	tokens map[string][]byte
}

func (s *recordingStorage) Store(ctx context.Context, key string, value []byte) error {
	if strings.Contains(key, "/challenge_tokens/") {
		s.mu.Lock()
		s.tokens[key] = bytes.Clone(value)
		s.mu.Unlock()
	}
	return s.Storage.Store(ctx, key, value)
}

// TestTLSALPNChallengeKey pins challengeTokenKey to certmagic: certmagic
// obtains a certificate from Pebble with TLS-ALPN-01 only, and the
// challenge is answered by the wrapper from the key certmagic's
// distributed solver wrote, found by challengeTokenKey and loadChallenge
// alone (not from certmagic's memory).
func TestTLSALPNChallengeKey(t *testing.T) {
	const name = "key.tlsalpn.example.com"
	port := testenv.FreePort(t)
	pebble := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t), TLSPort: port})
	storage := &recordingStorage{Storage: &certmagic.FileStorage{Path: t.TempDir()}, tokens: map[string][]byte{}}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pebble.ListenerCAPEM)
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return nil, errors.New("none") },
		Logger:           zap.NewNop(),
	})
	t.Cleanup(cache.Stop)
	magic := certmagic.New(cache, certmagic.Config{Storage: storage, Logger: zap.NewNop()})
	issuer := certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{
		CA:                   pebble.DirectoryURL,
		TrustedRoots:         roots,
		Email:                "ops@example.com",
		Agreed:               true,
		DisableHTTPChallenge: true,
		AltTLSALPNPort:       port, // taken by the wrapper: certmagic binds nothing
		Logger:               zap.NewNop(),
	})
	magic.Issuers = []certmagic.Issuer{issuer}

	var mu sync.Mutex
	var loadedKeys []string
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	w := &tlsALPNListener{Listener: ln, logger: zap.NewNop(), answer: func(n string) *tls.Certificate {
		chal, ok, err := loadChallenge(t.Context(), storage, issuer.IssuerKey(), n)
		if err != nil || !ok {
			t.Errorf("challenge for %s: found %v, error %v", n, ok, err)
			return nil
		}
		mu.Lock()
		loadedKeys = append(loadedKeys, challengeTokenKey(issuer.IssuerKey(), n))
		mu.Unlock()
		cert, err := acmez.TLSALPN01ChallengeCert(chal)
		if err != nil {
			t.Error(err)
			return nil
		}
		return cert
	}}
	defer w.Close()
	go func() {
		for {
			c, err := w.Accept()
			if err != nil {
				return
			}
			go func() { // the test's own server loop
				defer c.Close()
				_, _ = c.Read(make([]byte, 1))
			}()
		}
	}()

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if err := magic.ObtainCertSync(ctx, name); err != nil {
		t.Fatalf("obtaining with tls-alpn-01 answered by the wrapper: %v\npebble log:\n%s", err, pebble.Log())
	}
	wantKey := challengeTokenKey(issuer.IssuerKey(), name)
	storage.mu.Lock()
	_, wrote := storage.tokens[wantKey]
	var keys []string
	for k := range storage.tokens {
		keys = append(keys, k)
	}
	storage.mu.Unlock()
	if !wrote || len(keys) != 1 {
		t.Fatalf("certmagic stored challenges under %v, want under %s only", keys, wantKey)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(loadedKeys) == 0 {
		t.Fatal("the CA never reached the wrapper")
	}
}
