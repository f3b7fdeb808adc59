package caddyacme

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
)

// domainsSync is the cache_sync_interval of the tests in this file: how
// soon a node learns of an entry another node added.
const domainsSync = time.Second

// domainsFields is the acme app of the tests in this file: one configured
// domain, and a short cache sync.
var domainsFields = map[string]any{
	"domains":             []string{"configured.example.com"},
	"cache_sync_interval": domainsSync.String(),
	"renew_first_delay":   "1h",
}

// listDomains is GET /acme/domains on the admin API at base.
func listDomains(t *testing.T, base string) []string {
	t.Helper()
	out := mustCall(t, "GET", base+"/acme/domains", "", "", 200)
	var l struct {
		Data []string `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil || l.Data == nil {
		t.Fatalf("GET /acme/domains: %v: %s", err, out)
	}
	return l.Data
}

// storedDomainsRecord is the record at issuance.DomainsKey in app's
// storage.
func storedDomainsRecord(t *testing.T, app *App) string {
	t.Helper()
	data, err := app.storage.Load(t.Context(), issuance.DomainsKey)
	if err != nil {
		t.Fatalf("loading %s: %v", issuance.DomainsKey, err)
	}
	return string(data)
}

// TestDomainsThroughAdminAPI: POST /acme/domains on node A stores the
// entries, normalised, in the shared storage (201 with the whole list); GET
// lists them on A and on node B (another process sharing the storage);
// bad entries are 400 naming the entry, and storage is unchanged; the list
// survives a restart; DELETE of a URL-escaped wildcard entry is 200, then
// 404.
func TestDomainsThroughAdminAPI(t *testing.T) {
	a := newRig(t, testenv.PebbleOptions{})
	cfgA, adminA := withAdmin(t, a.config(a.acme(domainsFields), nil))
	app := a.load(cfgA)
	b := &rig{t: t, pebble: a.pebble, httpPort: testenv.FreePort(t), httpsPort: testenv.FreePort(t), storage: a.storage}
	cfgB, adminB := withAdmin(t, b.config(a.acme(domainsFields), nil))
	startNode(t, cfgB)

	if got := listDomains(t, adminA); len(got) != 0 {
		t.Fatalf("domains before any POST: %q", got)
	}
	want := []string{"*.tenant.example.net", "shop.example.org"}
	out := mustCall(t, "POST", adminA+"/acme/domains", "application/json", `{"domains": ["Shop.Example.ORG.", "*.tenant.example.net"]}`, 201)
	if !strings.Contains(out, `{"data":["*.tenant.example.net","shop.example.org"]}`) {
		t.Fatalf("POST reply %s, want the whole list", out)
	}
	// idempotent
	mustCall(t, "POST", adminA+"/acme/domains", "application/json", `{"domains": ["shop.example.org"]}`, 201)
	if got := listDomains(t, adminA); !slices.Equal(got, want) {
		t.Fatalf("GET on node A = %q, want %q", got, want)
	}
	record := storedDomainsRecord(t, app)
	if record != `{"domains":["*.tenant.example.net","shop.example.org"]}` {
		t.Fatalf("stored record %s", record)
	}
	if got := listDomains(t, adminB); !slices.Equal(got, want) {
		t.Fatalf("GET on node B = %q, want %q", got, want)
	}

	// bad entries: 400 naming the entry, nothing stored
	for _, tc := range []struct{ body, want string }{
		{`{"domains": ["ok.example", "a.*.example"]}`, `domains[1]: domain \"a.*.example\": invalid wildcard`},
		{`{"domains": ["shop.example.net:443"]}`, `must not have a port`},
		{`{"domains": ["under_score.example"]}`, `invalid character`},
		{`{"domains": []}`, `non-empty list`},
		{`{"domains": "ok.example"}`, `malformed JSON`},
	} {
		out := mustCall(t, "POST", adminA+"/acme/domains", "application/json", tc.body, 400)
		if !strings.Contains(out, `"error":`) || !strings.Contains(out, tc.want) {
			t.Errorf("POST %s: %s, want an error containing %s", tc.body, out, tc.want)
		}
	}
	if got := storedDomainsRecord(t, app); got != record {
		t.Fatalf("refused POSTs changed the record: %s", got)
	}
	mustCall(t, "PUT", adminA+"/acme/domains", "", "", 405)

	// a restart keeps them
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	app = a.load(cfgA)
	if got := listDomains(t, adminA); !slices.Equal(got, want) {
		t.Fatalf("GET after a restart = %q, want %q", got, want)
	}

	mustCall(t, "DELETE", adminA+"/acme/domains/%2A.tenant.example.net", "", "", 200)
	out = mustCall(t, "DELETE", adminA+"/acme/domains/%2A.tenant.example.net", "", "", 404)
	if !strings.Contains(out, `"error":"domain entry not found: *.tenant.example.net"`) {
		t.Fatalf("second DELETE: %s", out)
	}
	if got := listDomains(t, adminB); !slices.Equal(got, []string{"shop.example.org"}) {
		t.Fatalf("GET on node B after the DELETE = %q", got)
	}
	if got := storedDomainsRecord(t, app); got != `{"domains":["shop.example.org"]}` {
		t.Fatalf("stored record after the DELETE: %s", got)
	}
}

// TestDomainsAddedNameServed: a name outside the configured domains is
// refused until POST /acme/domains lists it; then a handshake on node A
// gets a certificate from Pebble; node B (another process) serves the
// stored certificate of a name of an added wildcard within its
// cache_sync_interval; a restarted node A serves the added names at once; a
// DELETE makes both nodes refuse the entry's names again. Last, node B
// orders a new name of an added entry, whose HTTP-01 challenge node A
// answers from storage (the acme_challenge handler).
func TestDomainsAddedNameServed(t *testing.T) {
	a := newRig(t, testenv.PebbleOptions{})
	cfgA, adminA := withAdmin(t, a.config(a.acme(domainsFields), nil))
	a.load(cfgA)
	b := &rig{t: t, pebble: a.pebble, httpPort: testenv.FreePort(t), httpsPort: testenv.FreePort(t), storage: a.storage}
	cfgB, _ := withAdmin(t, b.config(a.acme(domainsFields), nil)) // a.acme: the CA's HTTP-01 requests go to node A
	startNode(t, cfgB)

	if _, err := a.handshake("shop.example.org"); err == nil {
		t.Fatal("a name in no domains list was served")
	}
	if _, err := b.handshake("x.tenant.example.net"); err == nil {
		t.Fatal("node B served a name in no domains list")
	}
	if n := a.pebble.Orders(); n != 0 {
		t.Fatalf("refused names were ordered: %v", a.orderNames())
	}
	added := time.Now()
	mustCall(t, "POST", adminA+"/acme/domains", "application/json", `{"domains": ["shop.example.org", "*.tenant.example.net"]}`, 201)

	// node A: at once
	a.mustHandshake("shop.example.org")
	a.mustHandshake("x.tenant.example.net")
	a.mustHandshake("configured.example.com") // the configured list still applies
	if n := a.pebble.Orders(); n != 3 {
		t.Fatalf("orders = %v, want shop, x.tenant and configured once each", a.orderNames())
	}

	// node B: within its cache sync interval (plus a loaded machine's
	// slack), serving the certificate node A stored
	waitServed(t, b, "x.tenant.example.net", time.Until(added.Add(3*domainsSync)))
	if n := a.pebble.OrdersFor("x.tenant.example.net"); n != 1 {
		t.Fatalf("x.tenant.example.net ordered %d times, want once (node B loads node A's)", n)
	}

	// a restarted node A serves an added name at once
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	a.load(cfgA)
	a.mustHandshake("y.tenant.example.net")

	// removed: refused on A at once, on B within its interval
	mustCall(t, "DELETE", adminA+"/acme/domains/%2A.tenant.example.net", "", "", 200)
	if _, err := a.handshake("y.tenant.example.net"); err == nil {
		t.Fatal("node A serves a name of a removed entry")
	}
	deadline := time.Now().Add(3 * domainsSync)
	for {
		if _, err := b.handshake("x.tenant.example.net"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node B still serves a name of a removed entry %v after the DELETE", 3*domainsSync)
		}
		time.Sleep(100 * time.Millisecond)
	}
	a.mustHandshake("shop.example.org")

	// node B orders a name added again; the CA validates it at node A
	added = time.Now()
	mustCall(t, "POST", adminA+"/acme/domains", "application/json", `{"domains": ["*.tenant.example.net"]}`, 201)
	waitServed(t, b, "z.tenant.example.net", time.Until(added.Add(3*domainsSync)))
	if n := a.pebble.OrdersFor("z.tenant.example.net"); n != 1 {
		t.Fatalf("z.tenant.example.net ordered %d times, want once", n)
	}
}

// waitServed waits for node to serve name: its handshakes are refused
// until it learns that name is allowed, which must happen within; the
// handshake that starts then may take an order's time.
func waitServed(t *testing.T, node *rig, name string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, err := node.handshake(name)
		if err == nil {
			node.mustHandshake(name)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node on :%d still refuses %s %v after it was added: %v\npebble log:\n%s", node.httpsPort, name, within, err, node.pebble.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
