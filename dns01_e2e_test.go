package caddyacme

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
)

// dnsRig is a rig whose Pebble validates through a real DNS server (BIND,
// RFC 2136 updates signed with TSIG), and the acme app fields for DNS-01
// through it with the rfc2136 provider.
func dnsRig(t *testing.T) (*rig, *testenv.DNSServer) {
	t.Helper()
	dns := testenv.StartDNS(t, testenv.DNSOptions{})
	return newRig(t, testenv.PebbleOptions{DNSServer: dns.Addr}), dns
}

// dnsChallenge is the app's challenges field for DNS-01 through dns with
// provider (dns.RFC2136Provider(), possibly altered).
func dnsChallenge(dns *testenv.DNSServer, provider map[string]any) map[string]any {
	return map[string]any{"dns": map[string]any{
		"provider":  provider,
		"resolvers": []string{dns.Addr},
	}}
}

// TestWildcardCertificateThroughDNS01: with a DNS provider, the first
// handshake for a.x orders one certificate for *.x (DNS-01, the TXT record
// written to the DNS server by RFC 2136 and removed after); 200 random
// names one label below x are then served with no further order; a name
// two labels below x gets its own certificate; the listing shows *.x,
// and POST /acme renews it.
func TestWildcardCertificateThroughDNS01(t *testing.T) {
	r, dns := dnsRig(t)
	zone := dns.Zone
	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{
		"domains":    []string{"*." + zone},
		"challenges": dnsChallenge(dns, dns.RFC2136Provider()),
		"http_port":  nil,
	}), nil))
	app := r.load(cfg)

	leaf := r.handshakeFor("a."+zone, "*."+zone)
	if n := r.pebble.Orders(); n != 1 || r.pebble.OrdersFor("*."+zone) != 1 {
		t.Fatalf("orders = %v, want one for *.%s", r.orderNames(), zone)
	}
	if left := dns.ChallengeRecords(t); len(left) != 0 {
		t.Fatalf("challenge records left in the zone: %v", left)
	}

	// 200 random names under the zone: the same certificate, no order
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	sem := make(chan struct{}, 20)
	for i := range 200 {
		name := fmt.Sprintf("r%d-%x.%s", i, i*7919, zone)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			chain, err := r.handshake(name)
			if err == nil && !chain[0].Equal(leaf) {
				err = fmt.Errorf("%s served another certificate (%v)", name, chain[0].DNSNames)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders after 200 names under the wildcard = %v, want still 1", r.orderNames())
	}

	// a wildcard covers one label: a deeper name has its own certificate
	deep := "b.a." + zone
	r.handshakeFor(deep, deep)
	if n := r.pebble.OrdersFor(deep); n != 1 || r.pebble.Orders() != 2 {
		t.Fatalf("orders = %v, want one more for %s", r.orderNames(), deep)
	}
	if left := dns.ChallengeRecords(t); len(left) != 0 {
		t.Fatalf("challenge records left in the zone: %v", left)
	}

	// the listing has the wildcard certificate under its own name
	if hosts, want := listedHosts(t, base), []string{"*." + zone, deep}; !slices.Equal(hosts, want) {
		t.Fatalf("listed hosts = %v, want %v", hosts, want)
	}
	one := mustCall(t, "GET", base+"/acme/certificates/*."+zone, "", "", 200)
	if !strings.Contains(one, `"host":"*.`+zone+`"`) {
		t.Fatalf("GET /acme/certificates/*.%s = %s", zone, one)
	}

	// there is no HTTP-01 flow to test
	out := mustCall(t, "POST", base+"/acme", "application/json", `{"host":"a.`+zone+`","test_http_challenge_flow":true}`, 400)
	if !strings.Contains(out, "does not use the HTTP-01 challenge") {
		t.Fatalf("sanity check with DNS-01: %s", out)
	}

	// POST /acme renews it: a.x orders *.x, the certificate that serves it
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"a.`+zone+`"}`, 201)
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"*.`+zone+`"}`, 201)
	if n := r.pebble.OrdersFor("*." + zone); n != 3 {
		t.Fatalf("orders = %v, want *.%s ordered 3 times (issued, renewed twice)", r.orderNames(), zone)
	}
	if renewed := r.handshakeFor("c."+zone, "*."+zone); renewed.Equal(leaf) {
		t.Fatal("c.x is served the certificate from before the renewals")
	}
	if _, err := app.storage.Load(t.Context(), issuance.Site(app.issuer.IssuerKey(), "*."+zone).Cert); err != nil {
		t.Fatalf("the wildcard certificate is not where certmagic keeps it: %v", err)
	}

	// the renewal scan and the metrics count the wildcard certificate as
	// one (none due: nothing ordered)
	mustCall(t, "PATCH", base+"/acme", "", "", 202)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		mfs := scrape(t, strings.TrimPrefix(base, "http://"))
		if v, ok := testenv.Sample(mfs, "caddy_acme_certificates_managed", nil); ok && v == 2 {
			if n := mustSample(t, mfs, "caddy_acme_certificate_remaining_seconds", nil); n != 2 {
				t.Fatalf("certificate_remaining_seconds count = %v, want 2 (*.x and b.a.x)", n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("certificates_managed is not 2 (*.x and b.a.x) after a renewal scan")
		}
	}
	if n := r.pebble.Orders(); n != 4 {
		t.Fatalf("orders after the scan = %v, want still 4", r.orderNames())
	}
}

// TestDNS01WrongTSIGKey: a provider whose TSIG key the DNS server does not
// know fails the order with the server's refusal, writes nothing into the
// zone, and backs the name off: the next handshake places no order.
func TestDNS01WrongTSIGKey(t *testing.T) {
	r, dns := dnsRig(t)
	zone := dns.Zone
	provider := dns.RFC2136Provider()
	provider["key"] = "c2VjcmV0LXRoYXQtdGhlLXNlcnZlci1kb2VzLW5vdC1rbm93" // base64 of another secret
	app := r.load(r.config(r.acme(map[string]any{
		"domains":              []string{"*." + zone},
		"challenges":           dnsChallenge(dns, provider),
		"fail_backoff_minutes": 10,
	}), nil))

	if _, err := r.handshake("a." + zone); err == nil {
		t.Fatal("handshake succeeded although the DNS server refuses the provider's updates")
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders = %v, want 1", r.orderNames())
	}
	if recs := dns.ChallengeRecords(t); len(recs) != 0 {
		t.Fatalf("the zone took records signed with a wrong key: %v", recs)
	}
	data, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), "*."+zone))
	if err != nil {
		t.Fatalf("no backoff after the DNS server refused the update: %v", err)
	}
	var b backoffRecord
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	if b.Host != "*."+zone || !strings.Contains(b.Error, "dns-01 challenge: presenting _acme-challenge."+zone) || !strings.Contains(b.Error, "bad authentication") {
		t.Fatalf("backoff record = %+v, want the wildcard and the DNS server's refusal (TSIG: bad authentication)", b)
	}
	if strings.Contains(b.Error, provider["key"].(string)) {
		t.Fatal("the backoff record holds the TSIG key")
	}

	if _, err := r.handshake("b." + zone); err == nil {
		t.Fatal("handshake during the backoff succeeded")
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders during the backoff = %v, want still 1", r.orderNames())
	}
}

// handshakeFor is mustHandshake for a name served by the certificate of
// subject (the name itself, or the wildcard that covers it).
func (r *rig) handshakeFor(name, subject string) (leaf *x509.Certificate) {
	r.t.Helper()
	chain, err := r.handshake(name)
	if err != nil {
		r.t.Fatalf("TLS handshake for %s: %v\npebble log:\n%s", name, err, r.pebble.Log())
	}
	if !slices.Equal(chain[0].DNSNames, []string{subject}) {
		r.t.Fatalf("%s served a certificate for %v, want exactly %s", name, chain[0].DNSNames, subject)
	}
	return chain[0]
}

// TestWildcardKeepsOwnCertificates: a name that has its own certificate in
// storage (ordered before wildcard certificates were turned on, or
// migrated from Kong) is served it, with no order, once they are on; a
// name without one gets the wildcard.
func TestWildcardKeepsOwnCertificates(t *testing.T) {
	r, dns := dnsRig(t)
	zone := dns.Zone
	fields := map[string]any{
		"domains":               []string{"*." + zone},
		"challenges":            dnsChallenge(dns, dns.RFC2136Provider()),
		"wildcard_certificates": false,
	}
	r.load(r.config(r.acme(fields), nil))
	own := r.handshakeFor("a."+zone, "a."+zone)

	fields["wildcard_certificates"] = true
	cfg, base := withAdmin(t, r.config(r.acme(fields), nil))
	r.load(cfg) // a new cache: a.x is in storage only
	if got := r.handshakeFor("a."+zone, "a."+zone); !got.Equal(own) {
		t.Fatal("a.x is not served its own certificate once wildcard certificates are on")
	}
	r.handshakeFor("b."+zone, "*."+zone)
	if n := r.pebble.Orders(); n != 2 || r.pebble.OrdersFor("*."+zone) != 1 {
		t.Fatalf("orders = %v, want a.x then *.x", r.orderNames())
	}
	// POST /acme a.x renews a.x's own certificate, not the wildcard
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"a.`+zone+`"}`, 201)
	if r.pebble.OrdersFor("a."+zone) != 2 || r.pebble.OrdersFor("*."+zone) != 1 {
		t.Fatalf("orders = %v, want a.x renewed", r.orderNames())
	}
	if got := r.handshakeFor("a."+zone, "a."+zone); got.Equal(own) {
		t.Fatal("a.x's renewal is not served")
	}
}

// listedHosts returns the hosts of GET /acme/certificates, sorted.
func listedHosts(t *testing.T, base string) []string {
	t.Helper()
	var list struct {
		Data []struct {
			Host string `json:"host"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(mustCall(t, "GET", base+"/acme/certificates", "", "", 200)), &list); err != nil {
		t.Fatal(err)
	}
	hosts := make([]string, 0, len(list.Data))
	for _, c := range list.Data {
		hosts = append(hosts, c.Host)
	}
	slices.Sort(hosts)
	return hosts
}
