package caddyacme

import (
	"crypto/x509"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestClusterRenewsOnceAndSyncsCaches is two nodes sharing one storage,
// node B in another process, both holding the same certificates in memory.
// Both are told to scan at once (PATCH /acme): each certificate is renewed
// exactly once. Then node B alone renews them again: node A, which does not
// scan, serves the renewed certificates through the change log
// (cache_sync_interval), without a handshake-time reload. Last, a
// certificate deleted on node B (DELETE /acme/certificates/{host}) leaves
// node A's memory too: A's next handshake for it orders a new one instead of
// serving the deleted one.
func TestClusterRenewsOnceAndSyncsCaches(t *testing.T) {
	// long enough that a renewal reaches both nodes before the old
	// certificate expires, on a loaded machine
	const lifetime = 30 * time.Second
	a := newRig(t, testenv.PebbleOptions{ValidityPeriod: lifetime})
	fields := map[string]any{
		"domains":             []string{"*.cluster.example.com"},
		"disable_ari":         true, // Pebble's window for a short-lived certificate is its whole life: random
		"cache_sync_interval": "500ms",
		// no periodic scan: only the ones the test asks for
		"renew_first_delay": "1h",
	}
	b, adminA, adminB := startTwoNodes(t, a, fields)

	names := []string{"a.cluster.example.com", "b.cluster.example.com", "c.cluster.example.com"}
	current := make(map[string]*x509.Certificate)
	for _, name := range names {
		current[name] = a.mustHandshake(name)[0]
		if fromB := b.mustHandshake(name)[0]; !fromB.Equal(current[name]) {
			t.Fatalf("node B serves another certificate for %s than node A obtained", name)
		}
	}
	if n := a.pebble.Orders(); n != len(names) {
		t.Fatalf("orders = %d, want %d", n, len(names))
	}

	// both nodes scan at once: one renewal per certificate
	sleepUntilDue(current)
	var wg sync.WaitGroup
	for _, base := range []string{adminA, adminB} {
		wg.Go(func() { mustCall(t, "PATCH", base+"/acme", "", "", 202) })
	}
	wg.Wait()
	waitOrders(t, a.pebble, 2*len(names))
	waitScansDone(t, adminA, adminB)
	for _, name := range names {
		if n := a.pebble.OrdersFor(name); n != 2 {
			t.Fatalf("%s ordered %d times, want 2 (issued, renewed once)", name, n)
		}
		old := current[name]
		current[name] = servedRenewed(t, a, name, old)
		if fromB := servedRenewed(t, b, name, old); !fromB.Equal(current[name]) {
			t.Fatalf("the nodes serve different certificates for %s", name)
		}
	}

	// node B alone renews: node A learns it from the change log only
	sleepUntilDue(current)
	mustCall(t, "PATCH", adminB+"/acme", "", "", 202)
	waitOrders(t, a.pebble, 3*len(names))
	waitScansDone(t, adminB)
	for _, name := range names {
		current[name] = servedRenewed(t, a, name, current[name])
	}

	// deleted on node B: node A drops it, and orders it anew on its next
	// handshake (with it in memory, A would serve it without an order)
	gone := names[0]
	mustCall(t, "DELETE", adminB+"/acme/certificates/"+gone, "", "", 200)
	time.Sleep(2 * time.Second) // four sync intervals
	if again := a.mustHandshake(gone)[0]; again.SerialNumber.Cmp(current[gone].SerialNumber) == 0 {
		t.Fatalf("node A still serves the certificate of %s deleted on node B", gone)
	}
	if n := a.pebble.OrdersFor(gone); n != 4 {
		t.Fatalf("%s ordered %d times, want 4 (issued, renewed twice, ordered again after the delete)", gone, n)
	}
}

// sleepUntilDue sleeps until every certificate is half-way through its
// life (due for renewal, as the 14-day threshold is capped at that).
func sleepUntilDue(certs map[string]*x509.Certificate) {
	var due time.Time
	for _, c := range certs {
		if at := c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2); at.After(due) {
			due = at
		}
	}
	time.Sleep(time.Until(due.Add(time.Second)))
}

// waitOrders waits until Pebble has seen n orders.
func waitOrders(t *testing.T, pebble *testenv.Pebble, n int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for pebble.Orders() < n {
		if time.Now().After(deadline) {
			t.Fatalf("orders = %d, want %d", pebble.Orders(), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// servedRenewed waits up to 10s for the node to serve another certificate
// for name than old, and returns it.
func servedRenewed(t *testing.T, node *rig, name string, old *x509.Certificate) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		leaf := node.mustHandshake(name)[0]
		if leaf.SerialNumber.Cmp(old.SerialNumber) != 0 {
			return leaf
		}
		if time.Now().After(deadline) {
			t.Fatalf("node on :%d still serves the old certificate of %s 10s after it was renewed", node.httpsPort, name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitScansDone waits until no node is scanning: each reports when its
// next periodic scan is due, which it does not while a scan runs.
func waitScansDone(t *testing.T, bases ...string) {
	t.Helper()
	time.Sleep(500 * time.Millisecond) // a trigger wakes the runner at once
	deadline := time.Now().Add(60 * time.Second)
	for _, base := range bases {
		for {
			var st struct {
				Data struct {
					NextScan time.Time `json:"next_scan"`
				} `json:"data"`
			}
			out := mustCall(t, "GET", base+"/acme", "", "", 200)
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("GET /acme: %v: %s", err, out)
			}
			if !st.Data.NextScan.IsZero() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still scanning after 60s: %s", base, strings.TrimSpace(out))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// startTwoNodes loads the acme app with fields (over a's Pebble) on node A,
// in this process, and on node B, another process sharing a's storage,
// both with the admin API; it returns B's rig and both admin URLs.
func startTwoNodes(t *testing.T, a *rig, fields map[string]any) (b *rig, adminA, adminB string) {
	t.Helper()
	var cfgA, cfgB []byte
	cfgA, adminA = withAdmin(t, a.config(a.acme(fields), nil))
	a.load(cfgA)
	b = &rig{t: t, pebble: a.pebble, httpPort: testenv.FreePort(t), httpsPort: testenv.FreePort(t), storage: a.storage}
	cfgB, adminB = withAdmin(t, b.config(a.acme(fields), nil))
	startNode(t, cfgB)
	return b, adminA, adminB
}
