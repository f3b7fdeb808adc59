package caddyacme

import (
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestWildcardClusterRenewsOnceAndSyncs is TestClusterRenewsOnceAndSyncsCaches
// for one wildcard certificate obtained through DNS-01 (a real BIND server,
// RFC 2136 updates): two nodes share one storage, node B in another process.
// Node A's first handshake for a.x orders *.x; node B serves b.x with the
// same certificate without an order. Both are told to scan at once once it
// is due (PATCH /acme): *.x is renewed exactly once, and both nodes serve
// the renewed certificate for another name under x. Then the certificate
// is deleted on node B (DELETE /acme/certificates/*.x): node A drops it from
// memory too, and its next handshake for a name under x orders *.x again
// instead of serving the deleted one; node B then serves that new one from
// storage. No challenge record is left in the zone.
func TestWildcardClusterRenewsOnceAndSyncs(t *testing.T) {
	// long enough that a renewal reaches both nodes before the old
	// certificate expires, on a loaded machine
	const lifetime = 30 * time.Second
	dns := testenv.StartDNS(t, testenv.DNSOptions{})
	zone, wild := dns.Zone, "*."+dns.Zone
	a := newRig(t, testenv.PebbleOptions{ValidityPeriod: lifetime, DNSServer: dns.Addr})
	fields := map[string]any{
		"domains":             []string{wild},
		"challenges":          dnsChallenge(dns, dns.RFC2136Provider()),
		"http_port":           nil,
		"disable_ari":         true, // Pebble's window for a short-lived certificate is its whole life: random
		"cache_sync_interval": "500ms",
		// no periodic scan: only the ones the test asks for
		"renew_first_delay": "1h",
	}
	b, adminA, adminB := startTwoNodes(t, a, fields)

	current := a.handshakeFor("a."+zone, wild)
	if fromB := b.handshakeFor("b."+zone, wild); !fromB.Equal(current) {
		t.Fatalf("node B serves another certificate for b.%s than node A obtained for a.%s", zone, zone)
	}
	if n := a.pebble.Orders(); n != 1 || a.pebble.OrdersFor(wild) != 1 {
		t.Fatalf("orders = %v, want one for %s", a.orderNames(), wild)
	}

	// both nodes scan at once: one renewal
	sleepUntilDue(map[string]*x509.Certificate{wild: current})
	var wg sync.WaitGroup
	for _, base := range []string{adminA, adminB} {
		wg.Go(func() { mustCall(t, "PATCH", base+"/acme", "", "", 202) })
	}
	wg.Wait()
	waitOrders(t, a.pebble, 2)
	waitScansDone(t, adminA, adminB)
	if n := a.pebble.OrdersFor(wild); n != 2 || a.pebble.Orders() != 2 {
		t.Fatalf("orders = %v, want %s ordered twice (issued, renewed once)", a.orderNames(), wild)
	}
	old := current
	current = servedRenewed(t, a, "c."+zone, old)
	fromB := servedRenewed(t, b, "c."+zone, old)
	if !fromB.Equal(current) {
		t.Fatalf("the nodes serve different certificates for c.%s after the renewal", zone)
	}
	if !slices.Equal(current.DNSNames, []string{wild}) {
		t.Fatalf("the renewed certificate is for %v, want exactly %s", current.DNSNames, wild)
	}
	if left := dns.ChallengeRecords(t); len(left) != 0 {
		t.Fatalf("challenge records left in the zone after the renewal: %v", left)
	}

	// deleted on node B: node A drops it, and orders it anew on its next
	// handshake (with it in memory, A would serve it without an order)
	mustCall(t, "DELETE", adminB+"/acme/certificates/"+wild, "", "", 200)
	time.Sleep(2 * time.Second) // four sync intervals
	again := a.handshakeFor("d."+zone, wild)
	if again.SerialNumber.Cmp(current.SerialNumber) == 0 {
		t.Fatalf("node A still serves the certificate of %s deleted on node B", wild)
	}
	if n := a.pebble.OrdersFor(wild); n != 3 {
		t.Fatalf("orders = %v, want %s ordered 3 times (issued, renewed, ordered again after the delete)", a.orderNames(), wild)
	}
	// node B, which deleted it, takes node A's new one from storage
	if fromB := b.handshakeFor("e."+zone, wild); !fromB.Equal(again) {
		t.Fatalf("node B serves another certificate for e.%s than node A ordered after the delete", zone)
	}
	if n := a.pebble.Orders(); n != 3 {
		t.Fatalf("orders after node B's handshake = %v, want still 3", a.orderNames())
	}
	if left := dns.ChallengeRecords(t); len(left) != 0 {
		t.Fatalf("challenge records left in the zone: %v", left)
	}
}

// TestWildcardThroughCaddyCA is TestWildcardCertificateThroughDNS01 against
// a second real CA, Caddy's acme_server (smallstep's library), which with
// no policy issues wildcard certificates (its policy engine exists only
// once allow/deny rules or allow_wildcard_names are set). acme_server
// looks up the DNS-01 TXT record in the BIND server the rfc2136 provider
// writes to (CaddyCAOptions.TXTResolver). The first handshake for a.x
// orders one certificate for *.x; 20 other names one label below x are
// served by it with no further order; a name two labels below x gets its
// own certificate; no challenge record is left in the zone.
func TestWildcardThroughCaddyCA(t *testing.T) {
	dns := testenv.StartDNS(t, testenv.DNSOptions{})
	zone, wild := dns.Zone, "*."+dns.Zone
	// DNS-01 only: no HTTP-01 listener on port 80 (caddyCARig's addr)
	r := &caddyCARig{
		rig: &rig{t: t, httpPort: testenv.FreePort(t), httpsPort: testenv.FreePort(t), storage: t.TempDir()},
		ca:  testenv.StartCaddyCA(t, testenv.CaddyCAOptions{TXTResolver: dns.Addr}),
	}
	r.load(r.rig.config(r.acme(map[string]any{
		"domains":    []string{wild},
		"challenges": dnsChallenge(dns, dns.RFC2136Provider()),
		"http_port":  nil,
	}), nil))

	leaf := r.caHandshakeFor("a."+zone, wild)
	if n := r.ca.Orders(); n != 1 || r.ca.OrdersFor(wild) != 1 {
		t.Fatalf("orders = %d %v, want one for %s", n, r.ca.OrderList(), wild)
	}
	if left := dns.ChallengeRecords(t); len(left) != 0 {
		t.Fatalf("challenge records left in the zone: %v", left)
	}

	for i := range 20 {
		name := fmt.Sprintf("n%d.%s", i, zone)
		if got := r.caHandshakeFor(name, wild); !got.Equal(leaf) {
			t.Fatalf("%s served another certificate than a.%s", name, zone)
		}
	}
	if n := r.ca.Orders(); n != 1 {
		t.Fatalf("orders after 20 names under the wildcard = %d %v, want still 1", n, r.ca.OrderList())
	}

	// a wildcard covers one label: a deeper name has its own certificate
	deep := "b.a." + zone
	r.caHandshakeFor(deep, deep)
	if n := r.ca.Orders(); n != 2 || r.ca.OrdersFor(deep) != 1 {
		t.Fatalf("orders = %d %v, want one more for %s", n, r.ca.OrderList(), deep)
	}
	if left := dns.ChallengeRecords(t); len(left) != 0 {
		t.Fatalf("challenge records left in the zone: %v", left)
	}
}

// caHandshakeFor is handshakeFor (dns01_e2e_test.go) against the Caddy CA:
// name must be served a certificate the CA issued for exactly subject.
func (r *caddyCARig) caHandshakeFor(name, subject string) *x509.Certificate {
	r.t.Helper()
	chain, err := r.handshake(name)
	if err != nil {
		r.t.Fatalf("TLS handshake for %s: %v\nCA log:\n%s", name, err, r.ca.Log())
	}
	leaf := chain[0]
	if !slices.Equal(leaf.DNSNames, []string{subject}) || len(leaf.IPAddresses) != 0 {
		r.t.Fatalf("%s served a certificate for %v %v, want exactly %s", name, leaf.DNSNames, leaf.IPAddresses, subject)
	}
	if !strings.HasPrefix(leaf.Issuer.CommonName, "Caddy Local Authority") {
		r.t.Fatalf("leaf for %s issued by %q, want the Caddy CA", name, leaf.Issuer.CommonName)
	}
	return leaf
}
