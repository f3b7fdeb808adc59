package caddyacme

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestFloodOfRandomNames is a scan of random names under an allowed
// `*.flood.test`, as an attacker would send it: 5,000 TLS handshakes, 50
// at a time, each client giving up after 2 s, against an app with every
// guard rail at its default. The CA (a real Pebble) sees at most the
// budget of the registered domain (50), the process's goroutines and
// memory stay bounded, and names of other customers — one added through
// POST /acme/domains, one allowed by a permission endpoint — are served
// during and after the flood.
//
// The figures (peak goroutines, RSS growth, duration) are logged; their
// record is in BENCHMARKS.md (go test -run TestFloodOfRandomNames -v .).
func TestFloodOfRandomNames(t *testing.T) {
	const (
		floods      = 5000
		concurrency = 50
		patience    = 2 * time.Second
		budget      = 50 // the default of domain_budget
	)
	r := newRig(t, testenv.PebbleOptions{})

	// the permission endpoint: Caddy's ask protocol, GET ?domain=<name>
	var asked atomic.Int64
	perm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		asked.Add(1)
		if req.URL.Query().Get("domain") == "perm.customer-b.test" {
			return
		}
		w.WriteHeader(http.StatusForbidden)
	}))
	defer perm.Close()

	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{
		"domains":    []string{"*.flood.test"},
		"permission": map[string]any{"module": "http", "endpoint": perm.URL},
	}), nil))
	app := r.load(cfg)
	mustCall(t, "POST", base+"/acme/domains", "application/json", `{"domains":["shop.customer-a.test"]}`, http.StatusCreated)
	legit := []string{"shop.customer-a.test", "perm.customer-b.test"}

	baseGoroutines, baseRSS := runtime.NumGoroutine(), rssBytes(t)
	var peakGoroutines, peakRSS atomic.Int64
	sampleDone := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sampleDone:
				return
			case <-tick.C:
			}
			if n := int64(runtime.NumGoroutine()); n > peakGoroutines.Load() {
				peakGoroutines.Store(n)
			}
			if n := rssBytes(t); n > peakRSS.Load() {
				peakRSS.Store(n)
			}
		}
	})

	start := time.Now()
	names := make(chan string)
	var served, refused atomic.Int64
	var flood sync.WaitGroup
	for range concurrency {
		flood.Go(func() {
			for name := range names {
				if r.impatientHandshake(name, patience) == nil {
					served.Add(1)
				} else {
					refused.Add(1)
				}
			}
		})
	}
	// the legitimate names, asked for while the flood runs, by patient
	// clients
	var during sync.WaitGroup
	duringErrs := make([]error, len(legit))
	for i, name := range legit {
		during.Go(func() {
			time.Sleep(3 * time.Second)
			duringErrs[i] = r.impatientHandshake(name, time.Minute)
		})
	}
	for range floods {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		names <- "r" + hex.EncodeToString(b) + ".flood.test"
	}
	close(names)
	flood.Wait()
	took := time.Since(start)
	during.Wait()
	close(sampleDone)
	sampler.Wait()

	for i, name := range legit {
		if duringErrs[i] != nil {
			t.Errorf("%s not served during the flood: %v", name, duringErrs[i])
		}
		if err := r.impatientHandshake(name, time.Minute); err != nil { // and after it
			t.Errorf("%s not served after the flood: %v", name, err)
		}
	}
	orders := r.pebble.Orders()
	floodOrders := orders - len(legit)
	t.Logf("%d handshakes (%d concurrent, %s patience) in %s: %d served, %d refused or given up; %d orders at the CA (%d for the flood); permission endpoint asked %d times",
		floods, concurrency, patience, took.Round(time.Millisecond), served.Load(), refused.Load(), orders, floodOrders, asked.Load())
	t.Logf("refused at intake %v, dropped from the queue %v, refused by the budget %v",
		counterValue(t, app, "caddy_acme_intake_refusals_total"), counterValue(t, app, "caddy_acme_orders_dropped_total"), counterValue(t, app, "caddy_acme_budget_denials_total"))
	t.Logf("goroutines: %d before, %d at the peak; RSS: %d MB before, %d MB at the peak (+%d MB)",
		baseGoroutines, peakGoroutines.Load(), baseRSS>>20, peakRSS.Load()>>20, (peakRSS.Load()-baseRSS)>>20)

	if floodOrders > budget {
		t.Errorf("the flood placed %d orders, want at most the budget of its registered domain (%d)", floodOrders, budget)
	}
	if floodOrders == 0 {
		t.Error("the flood placed no order at all: the test shows nothing about the budget")
	}
	// bounds with a wide margin: without the guard rails the same flood
	// queued ~4,900 orders and ~6,300 goroutines
	if peak := peakGoroutines.Load(); peak > int64(baseGoroutines)+800 {
		t.Errorf("goroutines peaked at %d (from %d): not bounded by the intake", peak, baseGoroutines)
	}
	if grown := peakRSS.Load() - baseRSS; grown > 200<<20 {
		t.Errorf("RSS grew by %d MB during the flood", grown>>20)
	}
	if asked.Load() > 20 {
		t.Errorf("the permission endpoint was asked %d times: names the domains allow must not be asked about", asked.Load())
	}
}

// impatientHandshake is a client that gives up after patience (its
// connection is closed then, as a scanner's would be).
func (r *rig) impatientHandshake(name string, patience time.Duration) error {
	_, err := verifiedHandshake(r.httpsPort, name, r.pebble.RootPool(r.t), patience)
	return err
}

// rssBytes is this process's resident set size.
func rssBytes(t *testing.T) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("reading RSS: %v", err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("reading RSS from %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// counterValue is the value of the counter name in app's metrics.
func counterValue(t *testing.T, app *App, name string) float64 {
	t.Helper()
	mfs, err := app.ctx.GetMetricsRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}
