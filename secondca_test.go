package caddyacme

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/acmekit/caddy-acme/admin"
	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
)

// The tests in this file run like those of e2e_test.go (Caddy in the test
// process, real TLS clients) against a second real CA: Caddy's own
// acme_server (testenv.StartCaddyCA, smallstep's library), so that not
// everything is proven against Pebble alone. acme_server validates HTTP-01
// on port 80 only: the Caddy under test serves HTTP on port 80 of a
// loopback address of its own (testenv.LoopbackHTTPAddr), where the CA's
// DNS points the test's names.

// caddyCARig is a rig (e2e_test.go) whose CA is a testenv.CaddyCA.
type caddyCARig struct {
	*rig
	ca   *testenv.CaddyCA
	addr string // 127.0.0.N: the Caddy under test answers HTTP-01 on addr:80
}

func newCaddyCARig(t *testing.T, opts testenv.CaddyCAOptions) *caddyCARig {
	t.Helper()
	ca := testenv.StartCaddyCA(t, opts)
	return &caddyCARig{
		rig:  &rig{t: t, httpPort: 80, httpsPort: testenv.FreePort(t), storage: t.TempDir()},
		ca:   ca,
		addr: testenv.LoopbackHTTPAddr(t),
	}
}

// acme returns the acme app config for this rig's CA, with fields
// overridden (a nil value deletes a field).
func (r *caddyCARig) acme(fields map[string]any) map[string]any {
	app := map[string]any{
		"account_email": "ops@example.com",
		"api_uri":       r.ca.Directory,
		"trusted_roots": []string{r.ca.RootFile},
		"http_port":     80,
		"cert_type":     "ecc",
		"issue_timeout": "60s",
	}
	return override(app, fields)
}

// config is rig.config with the HTTP server on addr:80.
func (r *caddyCARig) config(acmeApp map[string]any, policy map[string]any) []byte {
	r.t.Helper()
	var cfg map[string]any
	if err := json.Unmarshal(r.rig.config(acmeApp, policy), &cfg); err != nil {
		r.t.Fatal(err)
	}
	servers := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
	servers["http"].(map[string]any)["listen"] = []string{net.JoinHostPort(r.addr, "80")}
	out, err := json.Marshal(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	return out
}

// point makes the CA's DNS resolve names to this rig's HTTP-01 listener.
func (r *caddyCARig) point(names ...string) {
	r.t.Helper()
	for _, name := range names {
		r.ca.SetA(r.t, name, r.addr)
	}
}

// handshake connects to the HTTPS server with SNI name, verifying the chain
// against the CA's root, and returns the verified chain. Like
// rig.handshake, it gives up after 5s.
func (r *caddyCARig) handshake(name string) ([]*x509.Certificate, error) {
	r.t.Helper()
	return r.handshakeWithin(name, 5*time.Second)
}

// handshakeWithin is handshake giving up after timeout (connection and
// handshake).
func (r *caddyCARig) handshakeWithin(name string, timeout time.Duration) ([]*x509.Certificate, error) {
	r.t.Helper()
	return verifiedHandshake(r.httpsPort, name, r.ca.RootPool(r.t), timeout)
}

// mustHandshake is handshake that fails the test on error, and checks the
// leaf names exactly name and comes from the Caddy CA.
func (r *caddyCARig) mustHandshake(name string) []*x509.Certificate {
	r.t.Helper()
	chain, err := r.handshake(name)
	if err != nil {
		r.t.Fatalf("TLS handshake for %s: %v\nCA log:\n%s", name, err, r.ca.Log())
	}
	leaf := chain[0]
	checkLeaf(r.t, leaf, name)
	if !strings.HasPrefix(leaf.Issuer.CommonName, "Caddy Local Authority") {
		r.t.Fatalf("leaf for %s issued by %q, want the Caddy CA", name, leaf.Issuer.CommonName)
	}
	return chain
}

// TestCaddyCAIssueOnFirstHandshake: the first handshake for an allowed name
// is answered with a certificate the CA issued on one order; the next is
// served from memory.
func TestCaddyCAIssueOnFirstHandshake(t *testing.T) {
	r := newCaddyCARig(t, testenv.CaddyCAOptions{})
	const name = "shop.caddyca.example"
	r.point(name)
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{name}}), nil))

	chain := r.mustHandshake(name)
	if n := r.ca.OrdersFor(name); n != 1 {
		t.Fatalf("orders for %s = %d, want 1", name, n)
	}
	if err := app.storage.Delete(t.Context(), "certificates"); err != nil {
		t.Fatal(err)
	}
	again := r.mustHandshake(name)
	if !again[0].Equal(chain[0]) {
		t.Fatal("second handshake served another certificate")
	}
	if n := r.ca.Orders(); n != 1 {
		t.Fatalf("orders after the second handshake = %d, want 1", n)
	}
}

// TestCaddyCARestartServesStoredCertificate: a new Caddy with the same
// storage serves the stored certificate without ordering, even while the
// CA is down; once the CA is back, a new name is ordered from it.
func TestCaddyCARestartServesStoredCertificate(t *testing.T) {
	r := newCaddyCARig(t, testenv.CaddyCAOptions{})
	const name, later = "persist.caddyca.example", "later.caddyca.example"
	r.point(name, later)
	cfg := r.config(r.acme(map[string]any{"domains": []string{name, later}}), nil)
	r.load(cfg)
	first := r.mustHandshake(name)
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}

	r.ca.Stop()
	r.load(cfg)
	second := r.mustHandshake(name)
	if !second[0].Equal(first[0]) {
		t.Fatal("the restarted Caddy served another certificate")
	}
	if n := r.ca.Orders(); n != 1 {
		t.Fatalf("orders = %d, want 1 (the restart must not order again)", n)
	}

	r.ca.Start(t)
	r.mustHandshake(later)
	if n, m := r.ca.Orders(), r.ca.OrdersFor(later); n != 2 || m != 1 {
		t.Fatalf("orders = %d, for %s %d; want 2 and 1", n, later, m)
	}
}

// TestCaddyCAAdminAPI: POST /acme orders a certificate (201), GET
// /acme/certificates lists it, POST /acme on the name again renews it at
// the CA (Kong documents it as a forced renewal: a name with a certificate
// in storage is renewed, not ordered anew), and PATCH /acme (202) starts a
// scan that checks it. The certificate is never due during the test (it
// takes seconds), so that the renewal at acme_server is shown without
// waiting for one; scans that renew due certificates are tested against
// Pebble (TestRenewalScan, renewal_test.go). acme_server's shortest lifetime
// is 5 minutes (and it backdates by one), which keeps the check that
// renew_at is at half the lifetime meaningful.
func TestCaddyCAAdminAPI(t *testing.T) {
	r := newCaddyCARig(t, testenv.CaddyCAOptions{Lifetime: 5 * time.Minute})
	const host = "api.caddyca.example"
	r.point(host)
	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{
		"domains":           []string{host},
		"renew_first_delay": "1h", // only PATCH scans
	}), nil))
	r.load(cfg)

	out := mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, 201)
	created := time.Now()
	if !strings.Contains(out, `"message":"certificate for host `+host+` is created"`) {
		t.Fatalf("POST body %s", out)
	}
	if n := r.ca.OrdersFor(host); n != 1 {
		t.Fatalf("%d orders for %s, want 1", n, host)
	}
	leaf := r.mustHandshake(host)[0]
	if n := r.ca.Orders(); n != 1 {
		t.Fatalf("handshake after POST ordered again: %d orders", n)
	}

	var list struct {
		Data []admin.CertInfo `json:"data"`
	}
	out = mustCall(t, "GET", base+"/acme/certificates", "", "", 200)
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	want := admin.NewCertInfo(host, leaf, time.Now())
	if len(list.Data) != 1 {
		t.Fatalf("list %s, want one certificate", out)
	}
	c := list.Data[0]
	if c.Host != host || !c.Valid || c.SerialNumber != want.SerialNumber || c.IssuerCN != leaf.Issuer.CommonName ||
		c.RenewalDue || c.RenewAt.IsZero() {
		t.Fatalf("listed %+v, want %+v, not due yet", c, want)
	}
	// due at half the lifetime
	if wait := time.Until(c.RenewAt); wait > 3*time.Minute {
		t.Fatalf("renew_at %s is %s away, want at most 3m for a 5m certificate", c.RenewAt, wait)
	}

	// POST again: the stored certificate is renewed at the CA, although it
	// is not due. Certificate times have a resolution of one second: the
	// renewal is signed in a later second than the first certificate (signed
	// before POST answered), so that its not_after is later.
	time.Sleep(time.Until(created.Truncate(time.Second).Add(time.Second)))
	out = mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, 201)
	if !strings.Contains(out, `"message":"certificate for host `+host+` is created"`) {
		t.Fatalf("POST body for the renewal %s", out)
	}
	if n := r.ca.OrdersFor(host); n != 2 {
		t.Fatalf("%d orders for %s after the renewal, want 2\nCA log:\n%s", n, host, r.ca.Log())
	}
	renewed := r.mustHandshake(host)[0]
	if renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 || !renewed.NotAfter.After(leaf.NotAfter) {
		t.Fatal("the handshake after the renewal served the old certificate")
	}
	if n := r.ca.Orders(); n != 2 {
		t.Fatalf("handshake after the renewal ordered again: %d orders", n)
	}
	out = mustCall(t, "GET", base+"/acme/certificates/"+host, "", "", 200)
	if !strings.Contains(out, `"serial_number":"`+admin.NewCertInfo(host, renewed, time.Now()).SerialNumber+`"`) {
		t.Fatalf("GET /acme/certificates/%s after the renewal: %s", host, out)
	}

	// PATCH: a scan runs now (renew_first_delay is 1h), checks the renewed
	// certificate, finds it not due and records no error for it.
	patched := time.Now()
	out = mustCall(t, "PATCH", base+"/acme", "", "", 202)
	if !strings.Contains(out, "Renewal process started successfully") {
		t.Fatalf("PATCH %s", out)
	}
	var st struct {
		Data struct {
			Start   time.Time `json:"start"`
			End     time.Time `json:"end"`
			Checked int       `json:"checked"`
			Due     int       `json:"due"`
			Renewed int       `json:"renewed"`
			Failed  int       `json:"failed"`
			Hosts   map[string]struct {
				NotAfter  time.Time `json:"not_after"`
				LastError string    `json:"last_error"`
			} `json:"hosts"`
		} `json:"data"`
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out = mustCall(t, "GET", base+"/acme", "", "", 200)
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("GET /acme: %v: %s", err, out)
		}
		if st.Data.End.After(patched) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the scan PATCH started did not end: %s", out)
		}
	}
	hs, ok := st.Data.Hosts[host]
	if st.Data.Start.Before(patched) || st.Data.Checked != 1 || st.Data.Due != 0 || st.Data.Renewed != 0 || st.Data.Failed != 0 ||
		!ok || hs.LastError != "" || !hs.NotAfter.Equal(renewed.NotAfter) {
		t.Fatalf("scan after PATCH: %s, want the renewed certificate checked, not due, no error\nCA log:\n%s", out, r.ca.Log())
	}
	if n := r.ca.Orders(); n != 2 {
		t.Fatalf("the scan of a certificate not due ordered: %d orders", n)
	}
}

// TestCaddyCAFailedValidationEndsOrder points a name at a loopback address
// where nothing listens on port 80. acme_server leaves the challenge
// pending with an error (smallstep/certificates#1365) instead of marking it
// invalid: the order must end on that error at once, not wait out
// issue_timeout, and back off like any refused order.
func TestCaddyCAFailedValidationEndsOrder(t *testing.T) {
	r := newCaddyCARig(t, testenv.CaddyCAOptions{})
	const name = "down.caddyca.example"
	r.ca.SetA(t, name, testenv.LoopbackHTTPAddr(t)) // held by this test; nothing listens there
	app := r.load(r.config(r.acme(map[string]any{
		"domains":              []string{name, "down2.caddyca.example"},
		"fail_backoff_minutes": 10,
		"issue_timeout":        "60s",
	}), nil))

	// The client waits longer than issue_timeout, so that an order that
	// waits it out shows.
	start := time.Now()
	_, err := r.handshakeWithin(name, 90*time.Second)
	took := time.Since(start)
	if err == nil {
		t.Fatal("handshake succeeded although validation cannot")
	}
	// A functional bound, not a benchmark: waiting for issue_timeout (60s)
	// would take twice as long.
	if took >= 30*time.Second {
		t.Fatalf("the failed handshake took %s: the order waited for issue_timeout instead of ending on the CA's challenge error", took)
	}
	if n, m := r.ca.Orders(), r.ca.OrdersFor(name); n != 1 || m != 1 {
		t.Fatalf("orders = %d, for %s %d; want 1", n, name, m)
	}
	data, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), name))
	if err != nil {
		t.Fatalf("loading the backoff record: %v", err)
	}
	var b backoffRecord
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	// the CA's problem: acme_server's connection error (its detail does
	// not say "connection refused": smallstep keeps the cause to itself)
	if b.Host != name || !strings.Contains(b.Error, "urn:ietf:params:acme:error:connection") {
		t.Fatalf("backoff record = %+v, want the host and the CA's connection problem", b)
	}
	if left := time.Until(b.Until); left < 9*time.Minute || left > 10*time.Minute {
		t.Fatalf("backoff ends in %s, want about 10m", left)
	}
	t.Logf("the handshake failed after %s; the order's error: %s", took, b.Error)

	if _, err := r.handshake(name); err == nil {
		t.Fatal("second handshake succeeded")
	}
	_, err = app.rt.Certificate(t.Context(), &tls.ClientHelloInfo{ServerName: name})
	if err == nil || !strings.Contains(err.Error(), "please try again") {
		t.Fatalf("error during backoff = %v, want the backoff's please try again", err)
	}
	if n := r.ca.Orders(); n != 1 {
		t.Fatalf("orders during the backoff = %d, want still 1", n)
	}

	// POST /acme for another such name answers with the CA's error
	const posted = "down2.caddyca.example"
	r.ca.SetA(t, posted, testenv.LoopbackHTTPAddr(t))
	start = time.Now()
	err = app.Order(t.Context(), posted)
	if err == nil || !strings.Contains(err.Error(), "urn:ietf:params:acme:error:connection") || errors.Is(err, issuance.ErrConflict) {
		t.Fatalf("POST /acme for a name whose validation fails: %v, want the CA's connection problem", err)
	}
	if took := time.Since(start); took >= 30*time.Second {
		t.Fatalf("POST /acme took %s: the order waited for issue_timeout", took)
	}
	if n := r.ca.OrdersFor(posted); n != 1 {
		t.Fatalf("orders for %s = %d, want 1", posted, n)
	}
}
