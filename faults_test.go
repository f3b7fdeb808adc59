package caddyacme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// The tests in this file break things in the middle of issuance: the
// storage server stops, a node holding the issue lock is killed, a stored
// value is overwritten with garbage (issue 6, item 3).

// TestRedisDownMidIssuance stops Redis (append-only file on) while an order
// is in flight: the CA's HTTP-01 validation for it is held at a gate until
// Redis is down, then let through, so the certificate is issued but cannot
// be stored. Caddy does not crash; that handshake and one for a name
// without a certificate fail with an error naming the name and the storage
// (no hang up to issue_timeout), while a certificate already in memory is
// still served. Once Redis is back the lost order is placed again and
// succeeds, and a restarted Caddy serves every certificate obtained before
// and after the outage from storage, without another order.
func TestRedisDownMidIssuance(t *testing.T) {
	const (
		before   = "before.faults.example.com"   // obtained before the outage
		inflight = "inflight.faults.example.com" // ordered when Redis stops
		during   = "during.faults.example.com"   // first asked for during the outage
	)
	red := testenv.StartRedis(t, testenv.RedisOptions{AppendOnly: true})
	// a short lease: the issue lock the failed order could not release
	// (Redis was down) is persisted, and must run out before the re-order
	storage := withLockLease(redisStorage(red, "faults"), 5*time.Second)
	gate := startChallengeGate(t, inflight)
	r := newRig(t, testenv.PebbleOptions{HTTPPort: gate.port})
	gate.forwardTo(r.httpPort)
	r.logFile = filepath.Join(t.TempDir(), "caddy.log")
	cfg := r.config(r.acme(map[string]any{"domains": []string{"*.faults.example.com"}, "storage": storage}), nil)
	app := r.load(cfg)
	roots := r.pebble.RootPool(t)

	first := r.mustHandshake(before)[0]

	// an order in flight: the CA's validation request waits at the gate
	inflightDone := make(chan error, 1)
	go func() {
		_, err := verifiedLeaf(r.httpsPort, inflight, roots, 3*time.Minute)
		inflightDone <- err
	}()
	gate.waitHeld(t, time.Minute)
	red.Stop()
	gate.release(true)
	select {
	case err := <-inflightDone:
		if err == nil {
			t.Fatalf("the handshake for %s succeeded although its certificate could not be stored", inflight)
		}
		t.Logf("handshake for %s with Redis down: %v", inflight, err)
	case <-time.After(2 * time.Minute):
		t.Fatalf("the handshake for %s hangs with Redis down", inflight)
	}
	if n := r.pebble.OrdersFor(inflight); n != 1 {
		t.Fatalf("orders for %s = %d, want 1", inflight, n)
	}
	// the CA issued it: it was lost when it could not be stored
	if logs, _ := os.ReadFile(r.logFile); !strings.Contains(string(logs), "obtaining certificate for "+inflight+": ["+inflight+"] Obtain: saving assets") {
		t.Fatalf("no failure to save %s's certificate logged:\n%s", inflight, problems(t, r.logFile, 20))
	}

	// while Redis is down: a clear error, in bounded time; memory still serves
	for _, name := range []string{inflight, during} {
		if _, err := r.handshake(name); err == nil {
			t.Fatalf("handshake for %s succeeded with Redis down", name)
		}
		err := certificateWithin(t, app, name, app.set.IssueTimeout+30*time.Second)
		if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "storage") {
			t.Fatalf("error for %s with Redis down: %v; want one naming the host and the storage", name, err)
		}
		t.Logf("error for %s with Redis down: %v", name, err)
	}
	if again := r.mustHandshake(before)[0]; !again.Equal(first) {
		t.Fatalf("with Redis down, %s is served another certificate than before", before)
	}

	// Redis is back: once the node's client has reconnected (go-redis
	// dials again once a second after failed dials), the lost order is
	// placed again and the new name ordered
	red.Start(t)
	probe := openStorage(t, storage) // shares the node's client
	certKey := certmagic.StorageKeys.SiteCert(app.issuer.IssuerKey(), before)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := probe.Load(t.Context(), certKey)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("loading %s 30s after Redis came back: %v", certKey, err)
		}
	}
	issued := map[string]*x509.Certificate{before: first}
	for _, name := range []string{inflight, during} {
		leaf, err := verifiedLeaf(r.httpsPort, name, roots, 3*time.Minute)
		if err != nil {
			t.Fatalf("handshake for %s after Redis came back: %v\ncaddy warnings and errors:\n%s", name, err, problems(t, r.logFile, 40))
		}
		issued[name] = leaf
	}
	for name, want := range map[string]int{before: 1, inflight: 2, during: 1} {
		if n := r.pebble.OrdersFor(name); n != want {
			t.Errorf("orders for %s = %d, want %d", name, n, want)
		}
	}

	// nothing lost: a new Caddy (empty memory) serves all three from Redis
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	orders := r.pebble.Orders()
	r.load(cfg)
	for name, want := range issued {
		if got := r.mustHandshake(name)[0]; !got.Equal(want) {
			t.Errorf("after a restart %s is served another certificate than was obtained", name)
		}
	}
	if n := r.pebble.Orders(); n != orders {
		t.Errorf("the restarted Caddy placed %d orders, want none", n-orders)
	}
	if logs, err := os.ReadFile(r.logFile); err != nil || strings.Contains(string(logs), "panic") {
		t.Errorf("a panic was logged (or the log is unreadable: %v)", err)
	}
}

// TestKilledLockHolder kills (SIGKILL) a node while it holds the issue lock
// of a name, on every backend: node B (another process) starts the order,
// whose HTTP-01 validation is held at a gate; once the lock is seen taken
// in the backend, node A asks for the same name and node B is killed. Node
// A takes the lock over when B's lease runs out (lock_lease 5s; 20s on
// Consul, its minimum; file_system locks go stale after 10s) and completes
// the name with one more order.
func TestKilledLockHolder(t *testing.T) {
	const name = "crash.locks.example.com"
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			storage := withLockLease(be.start(t)("killed-holder"), 5*time.Second)
			gate := startChallengeGate(t, name)
			a := newRig(t, testenv.PebbleOptions{HTTPPort: gate.port})
			gate.forwardTo(a.httpPort) // every validation but the held one goes to node A
			a.logFile = filepath.Join(t.TempDir(), "caddy.log")
			fields := map[string]any{"domains": []string{"*.locks.example.com"}, "storage": storage}
			a.load(a.config(a.acme(fields), nil))
			b := &rig{t: t, pebble: a.pebble, httpPort: testenv.FreePort(t), httpsPort: testenv.FreePort(t), storage: a.storage}
			nodeB := startNode(t, b.config(a.acme(fields), nil))
			roots := a.pebble.RootPool(t)

			go func() { _, _ = verifiedLeaf(b.httpsPort, name, roots, 3*time.Minute) }() // dies with node B
			gate.waitHeld(t, time.Minute)
			probe := openStorage(t, storage)
			lock := "issue_cert_" + name
			if ok, err := probe.(certmagic.TryLocker).TryLock(t.Context(), lock); err != nil || ok {
				if ok {
					_ = probe.Unlock(context.Background(), lock)
				}
				t.Fatalf("node B's order is at validation but TryLock(%s) = %v, %v; want the lock held", lock, ok, err)
			}

			result := make(chan error, 1)
			go func() {
				_, err := verifiedLeaf(a.httpsPort, name, roots, 3*time.Minute)
				result <- err
			}()
			killed := time.Now()
			nodeB.kill(t)
			gate.release(false) // node B's validation fails: it is gone anyway

			select {
			case err := <-result:
				if err != nil {
					t.Fatalf("node A's handshake for %s after node B died holding its lock: %v\nnode A's warnings and errors:\n%s",
						name, err, problems(t, a.logFile, 40))
				}
			case <-time.After(3 * time.Minute):
				t.Fatalf("node A's handshake for %s does not complete after node B died holding its lock", name)
			}
			t.Logf("%s: node A completed the order %s after node B was killed", be.name, time.Since(killed).Round(time.Millisecond))
			if n := a.pebble.OrdersFor(name); n != 2 {
				t.Fatalf("orders for %s = %d, want 2 (node B's, lost with it, and node A's)", name, n)
			}
		})
	}
}

// TestCorruptedStoredValue overwrites, on every backend, the stored
// certificate, private key and metadata of one name each with garbage, and
// one name's key with another's: a handshake for such a name fails with an
// error naming the host and what is wrong, without a new order, while the
// other names are still served.
func TestCorruptedStoredValue(t *testing.T) {
	const healthy = "ok.corrupt.example.com"
	garbage := func(certmagic.Storage, string) []byte { return []byte("\x00garbage\xff{not PEM, not JSON") }
	corrupt := []struct {
		host  string
		key   func(issuer, host string) string
		value func(s certmagic.Storage, issuer string) []byte
		want  string // in the error
	}{
		{"cert.corrupt.example.com", certmagic.StorageKeys.SiteCert, garbage, "in certificate input"},
		{"key.corrupt.example.com", certmagic.StorageKeys.SitePrivateKey, garbage, "in key input"},
		{"meta.corrupt.example.com", certmagic.StorageKeys.SiteMeta, garbage, "certificate metadata"},
		{"mismatch.corrupt.example.com", certmagic.StorageKeys.SitePrivateKey, func(s certmagic.Storage, issuer string) []byte {
			key, err := s.Load(t.Context(), certmagic.StorageKeys.SitePrivateKey(issuer, healthy))
			if err != nil {
				t.Fatal(err)
			}
			return key // a valid key, of another certificate
		}, "private key does not match public key"},
	}
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			storage := be.start(t)("corrupt")
			r := newRig(t, testenv.PebbleOptions{})
			cfg := r.config(r.acme(map[string]any{"domains": []string{"*.corrupt.example.com"}, "storage": storage}), nil)
			app := r.load(cfg)
			issuer := app.issuer.IssuerKey()
			good := r.mustHandshake(healthy)[0]
			for _, c := range corrupt {
				r.mustHandshake(c.host)
			}
			if err := caddy.Stop(); err != nil {
				t.Fatal(err)
			}

			store := openStorage(t, storage)
			for _, c := range corrupt {
				key := c.key(issuer, c.host)
				if _, err := store.Load(t.Context(), key); err != nil {
					t.Fatalf("the stored %s is not where expected: %v", key, err)
				}
				if err := store.Store(t.Context(), key, c.value(store, issuer)); err != nil {
					t.Fatal(err)
				}
			}

			orders := r.pebble.Orders()
			app = r.load(cfg) // empty memory: everything comes from storage
			for _, c := range corrupt {
				key := c.key(issuer, c.host)
				if _, err := r.handshake(c.host); err == nil {
					t.Errorf("handshake for %s succeeded with %s corrupted", c.host, key)
				}
				err := certificateWithin(t, app, c.host, time.Minute)
				if err == nil || !strings.Contains(err.Error(), c.host) || !strings.Contains(err.Error(), c.want) {
					t.Errorf("error for %s with %s corrupted: %v; want one naming the host and %q", c.host, key, err, c.want)
				} else {
					t.Logf("%s: %v", c.host, err)
				}
			}
			if got := r.mustHandshake(healthy)[0]; !got.Equal(good) {
				t.Errorf("%s is served another certificate than was stored", healthy)
			}
			if n := r.pebble.Orders(); n != orders {
				t.Errorf("corrupted values caused %d orders, want none", n-orders)
			}
		})
	}
}

// certificateWithin asks the app for name's certificate as a handshake
// would, and returns its error; it fails the test if no answer comes
// within d.
func certificateWithin(t *testing.T, app *App, name string, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := app.rt.Certificate(context.Background(), &tls.ClientHelloInfo{ServerName: name})
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("no answer for %s's certificate within %s", name, d)
		return nil
	}
}

// challengeGate is an HTTP server between the CA's HTTP-01 validation and
// the Caddy under test. It forwards every request to the port set with
// forwardTo, except the first challenge request for host hold, which it
// holds until release says whether to forward or fail it.
type challengeGate struct {
	port    int
	hold    string
	target  atomic.Int64  // the port to forward to
	held    chan struct{} // closed when the held request arrived
	once    sync.Once     // picks the request to hold
	verdict chan bool     // release's decision (buffered)
	stopped chan struct{} // closed when the test ends
	proxy   *httputil.ReverseProxy
}

// startChallengeGate starts a gate holding host's first validation on a
// free port, stopped when the test ends.
func startChallengeGate(t *testing.T, host string) *challengeGate {
	t.Helper()
	g := &challengeGate{
		hold:    host,
		held:    make(chan struct{}),
		verdict: make(chan bool, 1),
		stopped: make(chan struct{}),
	}
	g.proxy = &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(&url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(int(g.target.Load()))})
		pr.Out.Host = pr.In.Host // the name being validated
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(testenv.FreePort(t)))
	if err != nil {
		t.Fatal(err)
	}
	g.port = ln.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: g, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		close(g.stopped)
		_ = srv.Close()
	})
	return g
}

// forwardTo sets the port requests go to.
func (g *challengeGate) forwardTo(port int) { g.target.Store(int64(port)) }

// waitHeld waits until the request to hold has arrived.
func (g *challengeGate) waitHeld(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-g.held:
	case <-time.After(d):
		t.Fatalf("no validation request for %s within %s", g.hold, d)
	}
}

// release forwards (true) or fails (false) the held request.
func (g *challengeGate) release(forward bool) { g.verdict <- forward }

func (g *challengeGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if requestHost(r) == g.hold && strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
		first := false
		g.once.Do(func() { first = true })
		if first {
			close(g.held)
			select {
			case forward := <-g.verdict:
				if !forward {
					http.Error(w, "failed by the test", http.StatusServiceUnavailable)
					return
				}
			case <-g.stopped:
				return
			case <-r.Context().Done():
				return
			}
		}
	}
	g.proxy.ServeHTTP(w, r)
}
