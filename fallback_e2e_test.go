package caddyacme

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"io/fs"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
)

// fallbackRig is a rig whose primary CA (rig.pebble) is reached through a
// relay that can be cut, and a second Pebble as the fallback CA; both
// validate HTTP-01 on the rig's HTTP port.
type fallbackRig struct {
	*rig
	relay    *testenv.Relay
	primary  string // the primary's directory URL, through the relay
	fallback *testenv.Pebble
	roots    *x509.CertPool // both CAs' roots
}

func newFallbackRig(t *testing.T, primaryOpts testenv.PebbleOptions) *fallbackRig {
	t.Helper()
	r := newRig(t, primaryOpts)
	u, err := url.Parse(r.pebble.DirectoryURL)
	if err != nil {
		t.Fatal(err)
	}
	relay := testenv.NewRelay(t, u.Host)
	f := &fallbackRig{
		rig:      r,
		relay:    relay,
		primary:  "https://" + relay.Addr + u.Path,
		fallback: testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: r.httpPort}),
	}
	f.roots = r.pebble.RootPool(t)
	f.roots.AddCert(f.fallback.Root(t, 0))
	return f
}

// acme is the app's config with the primary CA through the relay and the
// second Pebble as its fallback.
func (f *fallbackRig) acme(fields map[string]any) map[string]any {
	base := f.rig.acme(map[string]any{
		"api_uri": f.primary,
		"fallback": []any{map[string]any{
			"api_uri":       f.fallback.DirectoryURL,
			"trusted_roots": []string{f.fallback.ListenerCAFile},
		}},
	})
	return override(base, fields)
}

// served returns the leaf served for name, verified against both CAs.
func (f *fallbackRig) served(name string) *x509.Certificate {
	f.t.Helper()
	chain, err := verifiedHandshake(f.httpsPort, name, f.roots, 10*time.Second)
	if err != nil {
		f.t.Fatalf("TLS handshake for %s: %v", name, err)
	}
	checkLeaf(f.t, chain[0], name)
	return chain[0]
}

// issuedBy fails the test unless leaf chains to pebble's root.
func issuedBy(t *testing.T, leaf *x509.Certificate, pebble *testenv.Pebble, which string) {
	t.Helper()
	pool := pebble.RootPool(t)
	inter := x509.NewCertPool()
	if !inter.AppendCertsFromPEM(pebble.IntermediatePEM(t, 0)) {
		t.Fatal("no intermediate certificate from Pebble")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter}); err != nil {
		t.Fatalf("the certificate of %v was not issued by the %s CA: %v", leaf.DNSNames, which, err)
	}
}

// listedCA returns the ca field of host in GET /acme/certificates/{host}.
func listedCA(t *testing.T, base, host string) string {
	t.Helper()
	var one struct {
		Data struct {
			CA string `json:"ca"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(mustCall(t, "GET", base+"/acme/certificates/"+host, "", "", 200)), &one); err != nil {
		t.Fatal(err)
	}
	return one.Data.CA
}

// TestFallbackWhenPrimaryDown: with the primary CA down, the fallback
// issues (the first order reaches the primary, fails to connect, and
// goes on to the fallback; the next ones skip the paused primary); the
// listing names the fallback; once the primary is back (and its pause
// over), a renewal of the fallback's certificate asks the primary first,
// which issues it. Orders are counted at both CAs.
func TestFallbackWhenPrimaryDown(t *testing.T) {
	f := newFallbackRig(t, testenv.PebbleOptions{})
	cfg, base := withAdmin(t, f.config(f.acme(map[string]any{"domains": []string{"*.example.com"}}), nil))
	f.load(cfg)

	f.relay.Close()
	const a, b = "a.example.com", "b.example.com"
	leaf := f.served(a)
	issuedBy(t, leaf, f.fallback, "fallback")
	if n := f.fallback.OrdersFor(a); n != 1 || f.pebble.Orders() != 0 {
		t.Fatalf("orders: fallback %v, primary %v; want a.example.com once at the fallback", f.fallback.OrderList(), f.pebble.OrderList())
	}
	if got := listedCA(t, base, a); got != f.fallback.DirectoryURL {
		t.Fatalf("listed CA of %s = %q, want the fallback's %s", a, got, f.fallback.DirectoryURL)
	}
	// the primary is paused on this node: the next order goes to the
	// fallback only (the relay is closed: nothing could reach it anyway)
	issuedBy(t, f.served(b), f.fallback, "fallback")
	if n := f.fallback.OrdersFor(b); n != 1 {
		t.Fatalf("orders at the fallback: %v", f.fallback.OrderList())
	}

	// the primary is back: after its pause (5 s), a renewal asks it first
	f.relay.Open()
	time.Sleep(6 * time.Second)
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+a+`"}`, 201)
	if n := f.pebble.OrdersFor(a); n != 1 || f.fallback.OrdersFor(a) != 1 {
		t.Fatalf("orders for %s after the renewal: primary %d, fallback %d; want one each", a, n, f.fallback.OrdersFor(a))
	}
	renewed := f.served(a)
	if renewed.Equal(leaf) {
		t.Fatal("the renewal is not served")
	}
	issuedBy(t, renewed, f.pebble, "primary")
	if got := listedCA(t, base, a); got != f.primary {
		t.Fatalf("listed CA of %s after the renewal = %q, want the primary's %s", a, got, f.primary)
	}
	// b is still the fallback's, served and listed as such
	if got := listedCA(t, base, b); got != f.fallback.DirectoryURL {
		t.Fatalf("listed CA of %s = %q, want the fallback's", b, got)
	}
	if hosts := listedHosts(t, base); !slices.Equal(hosts, []string{a, b}) {
		t.Fatalf("listed hosts = %v, want a and b once each (a is stored at both CAs)", hosts)
	}
}

// TestFallbackWhenPrimaryRefuses: the primary CA refuses the name (its
// HTTP-01 validation fails): the fallback issues in the same order; the
// name is backed off at the primary only, so the next order of it goes
// straight to the fallback.
func TestFallbackWhenPrimaryRefuses(t *testing.T) {
	f := newFallbackRig(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t)}) // nobody listens there
	app := f.load(f.config(f.acme(map[string]any{"domains": []string{"*.example.com"}, "fail_backoff_minutes": 10}), nil))

	const name = "refused.example.com"
	issuedBy(t, f.served(name), f.fallback, "fallback")
	if f.pebble.OrdersFor(name) != 1 || f.fallback.OrdersFor(name) != 1 {
		t.Fatalf("orders: primary %v, fallback %v; want one each", f.pebble.OrderList(), f.fallback.OrderList())
	}
	primaryKey := app.issuer.IssuerKey()
	data, err := app.storage.Load(t.Context(), issuance.BackoffKey(primaryKey, name))
	if err != nil {
		t.Fatalf("no backoff at the primary after it refused %s: %v", name, err)
	}
	var b backoffRecord
	if err := json.Unmarshal(data, &b); err != nil || b.CA != primaryKey || !strings.Contains(b.Error, "could not validate") {
		t.Fatalf("backoff record %s (%v), want the primary's refusal", data, err)
	}
	fallbackKey := app.magic.Issuers[1].IssuerKey()
	if _, err := app.storage.Load(t.Context(), issuance.BackoffKey(fallbackKey, name)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backoff at the fallback, which issued: %v", err)
	}

	// the name is backed off at the primary: its next order (after the
	// certificate is deleted) goes to the fallback only
	if err := app.rt.Delete(t.Context(), name, false); err != nil {
		t.Fatal(err)
	}
	issuedBy(t, f.served(name), f.fallback, "fallback")
	if f.pebble.OrdersFor(name) != 1 || f.fallback.OrdersFor(name) != 2 {
		t.Fatalf("orders: primary %v, fallback %v; want the primary skipped", f.pebble.OrderList(), f.fallback.OrderList())
	}
}
