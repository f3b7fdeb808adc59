package caddyacme

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/issuance"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestProfileShortlivedAndIPv6: with profile shortlived, a certificate has
// the profile's lifetime (6 days, where Pebble's default profile gives 90),
// a renewal keeps the profile, and the listing shows it with a renewal at
// half the lifetime (renew_threshold_days, 14, is longer than the
// certificate lives); with enable_ipv6, a handshake on [::1] without SNI
// gets a certificate for the IPv6 address ::1 under the same profile.
func TestProfileShortlivedAndIPv6(t *testing.T) {
	const shortlived = 6 * 24 * time.Hour
	r := newRig(t, testenv.PebbleOptions{
		ValidityPeriod: 90 * 24 * time.Hour,
		Profiles:       map[string]time.Duration{"shortlived": shortlived},
	})
	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{
		"domains":     []string{"short.example.com", "::1"},
		"profile":     "shortlived",
		"enable_ipv6": true,
		"disable_ari": true, // Pebble's ARI window is random within the life
	}), nil))
	cfg = alsoOnIPv6Loopback(t, cfg, r)
	r.load(cfg)

	const host = "short.example.com"
	leaf := r.mustHandshake(host)[0]
	checkLifetime(t, leaf, shortlived)

	// the listing shows the profile and a renewal at half the life
	var one struct {
		Data struct {
			Profile    string    `json:"profile"`
			NotAfter   time.Time `json:"not_after"`
			RenewAt    time.Time `json:"renew_at"`
			RenewalDue bool      `json:"renewal_due"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(mustCall(t, "GET", base+"/acme/certificates/"+host, "", "", 200)), &one); err != nil {
		t.Fatal(err)
	}
	info := one.Data
	if info.Profile != "shortlived" || info.RenewalDue {
		t.Fatalf("listing = %+v, want profile shortlived, not due", info)
	}
	if d := info.NotAfter.Sub(info.RenewAt); d < shortlived/2-time.Minute || d > shortlived/2+time.Minute {
		t.Fatalf("renewal %s before expiry, want half the 6-day life", d)
	}

	// a renewal keeps the profile
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, 201)
	renewed := r.mustHandshake(host)[0]
	if renewed.Equal(leaf) {
		t.Fatal("POST /acme did not renew the certificate")
	}
	checkLifetime(t, renewed, shortlived)

	// IPv6: no SNI, the address the client connected to
	chain, err := ipv6Handshake(r.httpsPort, r.pebble.RootPool(t))
	if err != nil {
		t.Fatalf("TLS handshake on [::1]: %v\npebble log:\n%s", err, r.pebble.Log())
	}
	ipLeaf := chain[0]
	if len(ipLeaf.IPAddresses) != 1 || !ipLeaf.IPAddresses[0].Equal(net.IPv6loopback) || len(ipLeaf.DNSNames) != 0 {
		t.Fatalf("leaf for ::1 has SANs %v %v, want exactly ::1", ipLeaf.DNSNames, ipLeaf.IPAddresses)
	}
	checkLifetime(t, ipLeaf, shortlived)
	if n := r.pebble.OrdersFor("::1"); n != 1 {
		t.Fatalf("orders = %v, want one for ::1", r.orderNames())
	}
	mustCall(t, "GET", base+"/acme/certificates/::1", "", "", 200)
	mustCall(t, "GET", base+"/acme/certificates/%5B0:0::1%5D", "", "", 200)
}

// TestIPv6RefusedByDefault: without enable_ipv6, an IPv6 address is
// neither served nor ordered, even if listed in domains.
func TestIPv6RefusedByDefault(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	r.load(alsoOnIPv6Loopback(t, r.config(r.acme(map[string]any{"domains": []string{"::1"}}), nil), r))
	if _, err := ipv6Handshake(r.httpsPort, r.pebble.RootPool(t)); err == nil {
		t.Fatal("handshake on [::1] succeeded without enable_ipv6")
	}
	if n := r.pebble.Orders(); n != 0 {
		t.Fatalf("orders = %v, want none", r.orderNames())
	}
}

// checkLifetime fails the test unless leaf lives for want (Pebble takes a
// second off).
func checkLifetime(t *testing.T, leaf *x509.Certificate, want time.Duration) {
	t.Helper()
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < want-time.Minute || got > want+time.Minute {
		t.Fatalf("certificate lives %s, want %s (the profile's)", got, want)
	}
}

// alsoOnIPv6Loopback makes the rig's HTTP and HTTPS servers also listen
// on [::1] (Pebble validates an IPv6 identifier there).
func alsoOnIPv6Loopback(t *testing.T, cfg []byte, r *rig) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(cfg, &m); err != nil {
		t.Fatal(err)
	}
	servers := m["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
	for name, port := range map[string]int{"https": r.httpsPort, "http": r.httpPort} {
		srv := servers[name].(map[string]any)
		srv["listen"] = append(srv["listen"].([]any), "[::1]:"+strconv.Itoa(port))
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ipv6Handshake connects to [::1]:port without SNI (an IP address) and
// returns the chain verified for ::1.
func ipv6Handshake(port int, roots *x509.CertPool) ([]*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", "[::1]:"+strconv.Itoa(port), &tls.Config{RootCAs: roots})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().VerifiedChains[0], nil
}

// TestUnknownProfile: a profile the CA's directory does not offer fails
// the order before it is placed, with the profiles the CA offers, and
// backs no name off (it is the configuration's fault, not the name's).
func TestUnknownProfile(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{Profiles: map[string]time.Duration{"shortlived": 6 * 24 * time.Hour}})
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{"p.example.com"}, "profile": "nosuch"}), nil))
	_, err := app.rt.Certificate(t.Context(), &tls.ClientHelloInfo{ServerName: "p.example.com"})
	if err == nil || !strings.Contains(err.Error(), `does not offer profile "nosuch" (it offers: default, shortlived)`) {
		t.Fatalf("order with an unknown profile: %v, want the profiles the CA offers", err)
	}
	if n := r.pebble.Orders(); n != 0 {
		t.Fatalf("orders = %v, want none", r.orderNames())
	}
	if _, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), "p.example.com")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backoff after a configuration error: %v", err)
	}
}

// TestUnknownProfileAfterReload: a config reload that changes only the
// profile to one the CA does not offer fails its orders before they are
// placed and backs no name off, although acmez serves the directory from
// its process-wide cache (fetched under the config before, so the app's
// own check as the directory passes, in TestUnknownProfile, does not run):
// acmez checks the profile against its cached directory, and its error
// names the profiles offered. Reloading with the profile fixed orders at
// once.
func TestUnknownProfileAfterReload(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{Profiles: map[string]time.Duration{"shortlived": 6 * 24 * time.Hour}})
	acme := func(profile string) []byte {
		return r.config(r.acme(map[string]any{"domains": []string{"*.example.com"}, "profile": profile}), nil)
	}
	r.load(acme("shortlived"))
	if _, err := r.handshake("a.example.com"); err != nil {
		t.Fatalf("handshake under profile shortlived: %v", err)
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders = %v, want one", r.orderNames())
	}
	app := r.load(acme("nosuch"))
	_, err := app.rt.Certificate(t.Context(), &tls.ClientHelloInfo{ServerName: "b.example.com"})
	if err == nil || !strings.Contains(err.Error(), "nosuch") || !strings.Contains(err.Error(), "shortlived") {
		t.Fatalf("order with an unknown profile after a reload: %v, want the profile and those the CA offers", err)
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders = %v, want only the one before the reload", r.orderNames())
	}
	if _, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), "b.example.com")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backoff after a configuration error: %v", err)
	}
	// the profile fixed by the next reload orders again at once
	app = r.load(acme("shortlived"))
	if _, err := app.rt.Certificate(t.Context(), &tls.ClientHelloInfo{ServerName: "b.example.com"}); err != nil {
		t.Fatalf("order after the profile is fixed: %v", err)
	}
}
