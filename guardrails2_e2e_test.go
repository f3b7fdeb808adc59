package caddyacme

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestBudgetRefusesWithMetricAndEvent: with domain_budget 2, the third new
// name under one registered domain is refused without an order, counted in
// caddy_acme_budget_denials_total and reported as cert_budget_denied with
// a message naming the domain and the field; a name under another
// registered domain is still ordered, and the names already issued are
// still served.
func TestBudgetRefusesWithMetricAndEvent(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	r.load(observed(t, r.config(r.acme(map[string]any{
		"domains":       []string{"*.budget.test", "*.other.test"},
		"domain_budget": 2,
	}), nil), addr))
	takeEvents()
	denials0 := mustSample(t, scrape(t, addr), "caddy_acme_budget_denials_total", nil)

	r.mustHandshake("a.budget.test")
	r.mustHandshake("b.shop.budget.test")
	if _, err := r.handshake("c.budget.test"); err == nil {
		t.Fatal("a third new name under budget.test was served with domain_budget 2")
	}
	if n := r.pebble.Orders(); n != 2 {
		t.Fatalf("orders at the CA = %d, want 2 (the budget)", n)
	}
	if d := mustSample(t, scrape(t, addr), "caddy_acme_budget_denials_total", nil) - denials0; d < 1 {
		t.Errorf("budget_denials_total grew by %v, want at least 1", d)
	}
	var denied []recordedEvent
	for _, e := range takeEvents() {
		if e.name == eventBudgetDenied {
			denied = append(denied, e)
		}
	}
	if len(denied) == 0 || denied[0].data["identifier"] != "c.budget.test" ||
		!strings.Contains(fmt.Sprint(denied[0].data["error"]), "budget.test") ||
		!strings.Contains(fmt.Sprint(denied[0].data["error"]), "domain_budget") {
		t.Fatalf("%s events = %+v, want one for c.budget.test naming budget.test and domain_budget", eventBudgetDenied, denied)
	}
	r.mustHandshake("a.other.test")  // another registered domain
	r.mustHandshake("a.budget.test") // issued ones are still served
	if n := r.pebble.Orders(); n != 3 {
		t.Fatalf("orders at the CA = %d, want 3", n)
	}
}

// TestPermissionModule: a name that domains do not allow is ordered when
// the permission endpoint (Caddy's http permission module, the `ask`
// protocol) answers 2xx; one it refuses is refused without an order, and
// its answer is kept for a while (asked once for two handshakes); an
// endpoint that cannot be reached refuses, without an order.
func TestPermissionModule(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	var asked atomic.Int64
	perm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		asked.Add(1)
		if req.URL.Query().Get("domain") != "yes.customer.test" {
			w.WriteHeader(http.StatusForbidden)
		}
	}))
	defer perm.Close()
	r.load(r.config(r.acme(map[string]any{
		"domains":    []string{"listed.example.com"},
		"permission": map[string]any{"module": "http", "endpoint": perm.URL},
	}), nil))

	r.mustHandshake("yes.customer.test")
	r.mustHandshake("listed.example.com") // the allowlist: not asked
	for range 2 {
		if _, err := r.handshake("no.customer.test"); err == nil {
			t.Fatal("a name the permission endpoint refuses was served")
		}
	}
	if n := r.pebble.Orders(); n != 2 {
		t.Fatalf("orders at the CA = %d, want 2", n)
	}
	if n := asked.Load(); n != 2 {
		t.Fatalf("the permission endpoint was asked %d times, want 2 (yes once, no once: its answer is kept)", n)
	}

	// an endpoint that cannot be reached
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/allowed"
	ln.Close()
	r.load(r.config(r.acme(map[string]any{
		"domains":    []string{"listed.example.com"},
		"permission": map[string]any{"module": "http", "endpoint": dead},
	}), nil))
	if _, err := r.handshake("down.customer.test"); err == nil {
		t.Fatal("served although the permission endpoint cannot be reached")
	}
	if n := r.pebble.Orders(); n != 2 {
		t.Fatalf("orders at the CA = %d after the unreachable endpoint, want still 2", n)
	}
	r.mustHandshake("yes.customer.test") // stored: served without asking
}
