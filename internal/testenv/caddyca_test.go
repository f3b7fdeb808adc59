package testenv

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// newCaddyCAClient is an acmeClient (pebble_test.go) for ca.
func newCaddyCAClient(t *testing.T, ca *CaddyCA) *acmeClient {
	t.Helper()
	c := &acmeClient{t: t, hc: ca.Client()}
	t.Cleanup(c.hc.CloseIdleConnections)
	c.accountKey()
	resp, err := c.hc.Get(ca.Directory)
	if err != nil {
		t.Fatalf("GET directory: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&c.dir); err != nil {
		t.Fatal(err)
	}
	if status, body := c.newAccount(nil); status != http.StatusCreated {
		t.Fatalf("newAccount: %d %s", status, body)
	}
	return c
}

// serveHTTP01 answers every HTTP-01 challenge of c on addr:80 and counts
// the requests.
func serveHTTP01(t *testing.T, addr string, c *acmeClient) *atomic.Int64 {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "80"))
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.URL.Path, "/.well-known/acme-challenge/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		hits.Add(1)
		io.WriteString(w, token+"."+c.thumbprint())
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &hits
}

func TestCaddyCA(t *testing.T) {
	t.Parallel()
	ca := StartCaddyCA(t, CaddyCAOptions{Lifetime: 3 * time.Hour})
	if !strings.HasSuffix(ca.Directory, "/acme/local/directory") || !strings.HasPrefix(ca.Directory, "https://127.0.0.1:") {
		t.Fatalf("Directory = %s", ca.Directory)
	}
	rootBefore, err := os.ReadFile(ca.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	c := newCaddyCAClient(t, ca)
	addr := LoopbackHTTPAddr(t)
	hits := serveHTTP01(t, addr, c)

	const name = "www.Caddy-Testenv.test"
	ca.SetA(t, name, addr)
	chain := c.obtain(name)
	leaf := chain[0]
	if len(leaf.DNSNames) != 1 || !strings.EqualFold(leaf.DNSNames[0], name) {
		t.Errorf("leaf names %v, want %s", leaf.DNSNames, name)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < 3*time.Hour || got > 3*time.Hour+2*time.Minute {
		t.Errorf("leaf lifetime %s, want 3h (Lifetime)", got)
	}
	inters := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inters.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(t), Intermediates: inters, DNSName: strings.ToLower(name)}); err != nil {
		t.Errorf("leaf does not verify against the root: %v", err)
	}
	if hits.Load() == 0 {
		t.Error("the CA validated without asking the HTTP-01 responder on " + addr + ":80")
	}
	if n := ca.Orders(); n != 1 {
		t.Errorf("Orders() = %d after one issuance, want 1\n%s", n, ca.Log())
	}
	if n := ca.OrdersFor(name); n != 1 {
		t.Errorf("OrdersFor(%q) = %d, want 1", name, n)
	}
	if n := ca.OrdersFor("other.test"); n != 0 {
		t.Errorf("OrdersFor(other.test) = %d, want 0", n)
	}
	if l := ca.OrderList(); len(l) != 1 || l[0].Account != c.kid || l[0].ID == "" {
		t.Errorf("OrderList() = %+v, want one order of account %s", l, c.kid)
	}

	// A name pointing at an address where nothing listens on port 80: the
	// CA leaves the challenge pending with a connection error
	// (smallstep/certificates#1365), which clients must not wait out.
	const down = "down.caddy-testenv.test"
	ca.SetA(t, down, LoopbackHTTPAddr(t)) // held for this test, nothing listens
	ch := c.failedChallenge(down)
	if ch.Status != "pending" || ch.Error == nil || ch.Error.Type != "urn:ietf:params:acme:error:connection" {
		t.Fatalf("challenge after a refused connection = %+v, want pending with a connection error", ch)
	}
	if n := ca.Orders(); n != 2 {
		t.Errorf("Orders() = %d, want 2", n)
	}

	// Stopped: connections are refused. Started: the same root, the same
	// account, and the orders are still counted.
	ca.Stop()
	resp, err := ca.Client().Get(ca.Directory)
	if err == nil {
		resp.Body.Close()
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET directory of a stopped CA: %v, want connection refused", err)
	}
	ca.Start(t)
	c.hc.CloseIdleConnections()
	c.nonce = ""
	c.obtain(name)
	if n, m := ca.Orders(), ca.OrdersFor(name); n != 3 || m != 2 {
		t.Errorf("after a restart: Orders() = %d, OrdersFor = %d, want 3 and 2\n%s", n, m, ca.Log())
	}
	rootAfter, err := os.ReadFile(ca.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(rootAfter) != string(rootBefore) {
		t.Error("the root changed across the restart")
	}
}

// acmeChallenge is an ACME challenge object.
type acmeChallenge struct {
	Type   string `json:"type"`
	URL    string `json:"url"`
	Status string `json:"status"`
	Error  *struct {
		Type   string `json:"type"`
		Detail string `json:"detail"`
	} `json:"error"`
}

// failedChallenge orders name, answers its HTTP-01 challenge and returns
// the challenge as the CA then shows it.
func (c *acmeClient) failedChallenge(name string) acmeChallenge {
	t := c.t
	t.Helper()
	resp, body := c.post(c.dir["newOrder"], map[string]any{
		"identifiers": []map[string]string{{"type": "dns", "value": name}},
	})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("newOrder: %s %s", resp.Status, body)
	}
	var order acmeOrder
	if err := json.Unmarshal(body, &order); err != nil || len(order.Authorizations) != 1 {
		t.Fatalf("order %s: %v", body, err)
	}
	var authz struct {
		Challenges []acmeChallenge `json:"challenges"`
	}
	if _, body := c.post(order.Authorizations[0], nil); json.Unmarshal(body, &authz) != nil {
		t.Fatalf("authz %s", body)
	}
	for _, ch := range authz.Challenges {
		if ch.Type != "http-01" {
			continue
		}
		if resp, body := c.post(ch.URL, struct{}{}); resp.StatusCode != http.StatusOK {
			t.Fatalf("responding to challenge: %s %s", resp.Status, body)
		}
		_, body := c.post(ch.URL, nil)
		var got acmeChallenge
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("challenge %s: %v", body, err)
		}
		return got
	}
	t.Fatalf("no http-01 challenge in %+v", authz)
	return acmeChallenge{}
}

func TestLoopbackHTTPAddr(t *testing.T) {
	t.Parallel()
	a, b := LoopbackHTTPAddr(t), LoopbackHTTPAddr(t)
	if a == b || !strings.HasPrefix(a, "127.0.0.") || !strings.HasPrefix(b, "127.0.0.") || a == "127.0.0.1" {
		t.Fatalf("LoopbackHTTPAddr gave %s and %s, want two distinct 127.0.0.N, N >= 2", a, b)
	}
	for _, ip := range []string{a, b} {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "80"))
		if err != nil {
			t.Fatalf("%s:80 from LoopbackHTTPAddr cannot be bound: %v", ip, err)
		}
		ln.Close()
	}
}

func TestMissing(t *testing.T) {
	// Uses t.Setenv, so not parallel.
	t.Setenv("CI", "")
	r := &recordingTB{TB: t}
	if missing(r, "no go"); r.skipped != "no go" || r.failed != "" {
		t.Errorf("outside CI: skipped %q, failed %q; want a skip", r.skipped, r.failed)
	}
	t.Setenv("CI", "true")
	r = &recordingTB{TB: t}
	if missing(r, "no go"); r.skipped != "" || r.failed != "no go" {
		t.Errorf("with CI=true: skipped %q, failed %q; want a failure", r.skipped, r.failed)
	}
}
