package caddyacme

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/acmekit/caddy-acme/internal/appconfig"
	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/redis"
)

// handApp provisions an app by hand (no config load, so no events app) over
// a file storage in a temporary directory, allowing any domain.
func handApp(t *testing.T) *App {
	t.Helper()
	return provisionByHand(t, &App{Config: appconfig.Config{AllowAnyDomain: true}})
}

// provisionByHand provisions a (for tests and benchmarks) over a file
// storage in a temporary directory, with a placeholder email and CA.
func provisionByHand(tb testing.TB, a *App) *App {
	tb.Helper()
	storage, err := json.Marshal(map[string]any{"module": "file_system", "root": tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	a.AccountEmail, a.APIURI, a.StorageRaw = "ops@example.com", "https://ca.example/dir", storage
	ctx, cancel := caddy.NewContext(caddy.Context{Context: tb.Context()})
	tb.Cleanup(cancel)
	if err := a.Provision(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = a.Cleanup() })
	return a
}

// --- end to end, with Pebble, Caddy's admin /metrics and the events app ---

func init() {
	caddy.RegisterModule(eventRecorder{})
}

// eventRecorder is a test-only event handler (events.handlers.acme_test_recorder)
// that keeps every event it is given in recorded.
type eventRecorder struct{}

// CaddyModule returns the Caddy module information.
func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.acme_test_recorder",
		New: func() caddy.Module { return new(eventRecorder) },
	}
}

// Handle records e.
func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	var origin string
	if m := e.Origin(); m != nil {
		origin = string(m.CaddyModule().ID)
	}
	recorded.mu.Lock()
	recorded.events = append(recorded.events, recordedEvent{name: e.Name(), origin: origin, data: e.Data})
	recorded.mu.Unlock()
	return nil
}

type recordedEvent struct {
	name, origin string
	data         map[string]any
}

var recorded struct {
	mu     sync.Mutex // protects events
	events []recordedEvent
}

// takeEvents returns the events recorded since the last call.
func takeEvents() []recordedEvent {
	recorded.mu.Lock()
	defer recorded.mu.Unlock()
	out := recorded.events
	recorded.events = nil
	return out
}

// observed is a caddy config made by rig.config with Caddy's admin listener
// on addr and the events app subscribing the recorder to events from the
// acme app.
func observed(t *testing.T, cfg []byte, addr string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(cfg, &m); err != nil {
		t.Fatal(err)
	}
	m["admin"] = map[string]any{"listen": addr, "config": map[string]any{"persist": false}}
	m["apps"].(map[string]any)["events"] = map[string]any{
		"subscriptions": []any{map[string]any{
			"events":   []string{"cert_obtained", "cert_failed", eventBackoffDenied, eventBudgetDenied},
			"modules":  []string{"acme"},
			"handlers": []any{map[string]any{"handler": "acme_test_recorder"}},
		}},
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// scrape reads Caddy's admin /metrics endpoint.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("scraping /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping /metrics: status %d", resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	// no metric of the app has a host label (or any label but these)
	allowed := map[string]bool{"outcome": true, "kind": true, "backend": true, "operation": true}
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "caddy_acme_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !allowed[lp.GetName()] {
					t.Fatalf("%s has label %s=%q", name, lp.GetName(), lp.GetValue())
				}
			}
		}
	}
	return mfs
}

// mustSample is sample that fails the test when the series is absent.
func mustSample(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := testenv.Sample(mfs, name, labels)
	if !ok {
		t.Fatalf("%s %v not exported", name, labels)
	}
	return v
}

// TestMetricsAndEventsIssuance orders, renews and reloads through a real
// Caddy and Pebble, reading the admin listener's /metrics and the events a
// subscriber receives.
func TestMetricsAndEventsIssuance(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	const host = "metrics.example.com"
	app := r.load(observed(t, r.config(r.acme(map[string]any{"domains": []string{host}}), nil), addr))
	takeEvents()

	success := map[string]string{"outcome": "success"}
	before := scrape(t, addr)
	orders0 := mustSample(t, before, "caddy_acme_orders_total", success)
	renewals0 := mustSample(t, before, "caddy_acme_renewals_total", success)
	timed0, _ := testenv.Sample(before, "caddy_acme_issuance_duration_seconds", map[string]string{"kind": "order", "outcome": "success"})
	fsOps := func(mfs map[string]*dto.MetricFamily, op string) float64 {
		v, _ := testenv.Sample(mfs, "caddy_acme_storage_operation_duration_seconds", map[string]string{"backend": "file_system", "operation": op})
		return v
	}

	r.mustHandshake(host)
	after := scrape(t, addr)
	if d := mustSample(t, after, "caddy_acme_orders_total", success) - orders0; d != 1 {
		t.Errorf("orders_total{outcome=success} grew by %v, want 1", d)
	}
	if d := mustSample(t, after, "caddy_acme_issuance_duration_seconds", map[string]string{"kind": "order", "outcome": "success"}) - timed0; d != 1 {
		t.Errorf("issuance_duration_seconds{kind=order,outcome=success} count grew by %v, want 1", d)
	}
	for _, op := range []string{"load", "store", "lock", "unlock"} {
		if d := fsOps(after, op) - fsOps(before, op); d <= 0 {
			t.Errorf("storage %s on file_system: %v new samples, want some", op, d)
		}
	}
	if v := mustSample(t, after, "caddy_acme_certificates_cached", nil); v != 1 {
		t.Errorf("certificates_cached = %v, want 1", v)
	}
	ev := takeEvents()
	if len(ev) != 1 || ev[0].name != "cert_obtained" || ev[0].origin != "acme" ||
		ev[0].data["identifier"] != host || ev[0].data["renewal"] != false {
		t.Fatalf("events after the order = %+v, want one cert_obtained from acme for %s with renewal false", ev, host)
	}

	// a renewal scan stores the status the expiry metrics come from
	app.TriggerScan()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mfs := scrape(t, addr)
		if v, ok := testenv.Sample(mfs, "caddy_acme_certificates_managed", nil); ok && v == 1 {
			if n := mustSample(t, mfs, "caddy_acme_certificate_remaining_seconds", nil); n != 1 {
				t.Fatalf("certificate_remaining_seconds count = %v, want 1", n)
			}
			if v := mustSample(t, mfs, "caddy_acme_certificate_min_remaining_seconds", nil); v < 30*day {
				t.Fatalf("certificate_min_remaining_seconds = %v, want Pebble's ~90 days", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no certificates_managed after a renewal scan")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// a renewal (the admin API's POST for a stored certificate)
	if err := app.Order(t.Context(), host); err != nil {
		t.Fatalf("renewing: %v", err)
	}
	renewed := scrape(t, addr)
	if d := mustSample(t, renewed, "caddy_acme_renewals_total", success) - renewals0; d != 1 {
		t.Errorf("renewals_total{outcome=success} grew by %v, want 1", d)
	}
	if v := mustSample(t, renewed, "caddy_acme_issuance_duration_seconds", map[string]string{"kind": "renewal", "outcome": "success"}); v < 1 {
		t.Errorf("issuance_duration_seconds{kind=renewal,outcome=success} count = %v, want at least 1", v)
	}
	ev = takeEvents()
	if len(ev) != 1 || ev[0].name != "cert_obtained" || ev[0].data["identifier"] != host || ev[0].data["renewal"] != true {
		t.Fatalf("events after the renewal = %+v, want one cert_obtained for %s with renewal true", ev, host)
	}

	// a config reload: new registry, new app; the counters keep their values
	ordersBefore := mustSample(t, renewed, "caddy_acme_orders_total", success)
	renewalsBefore := mustSample(t, renewed, "caddy_acme_renewals_total", success)
	r.load(observed(t, r.config(r.acme(map[string]any{"domains": []string{host, "other.example.com"}}), nil), addr))
	reloaded := scrape(t, addr)
	if v := mustSample(t, reloaded, "caddy_acme_orders_total", success); v != ordersBefore {
		t.Errorf("orders_total{outcome=success} after reload = %v, want %v", v, ordersBefore)
	}
	if v := mustSample(t, reloaded, "caddy_acme_renewals_total", success); v != renewalsBefore {
		t.Errorf("renewals_total{outcome=success} after reload = %v, want %v", v, renewalsBefore)
	}
	if v := mustSample(t, reloaded, "caddy_acme_certificates_cached", nil); v != 0 {
		t.Errorf("certificates_cached of the new app = %v, want 0 before any handshake", v)
	}
	if fsOps(reloaded, "load") < fsOps(renewed, "load") {
		t.Error("storage samples went down across the reload")
	}
	r.mustHandshake(host) // from storage: no order, no event
	if v := mustSample(t, scrape(t, addr), "caddy_acme_orders_total", success); v != ordersBefore {
		t.Errorf("orders_total after serving a stored certificate = %v, want %v", v, ordersBefore)
	}
	if ev := takeEvents(); len(ev) != 0 {
		t.Errorf("events for a stored certificate: %+v, want none", ev)
	}
}

// TestMetricsAndEventsFailedOrder: Pebble cannot validate, so the order
// fails (counted, timed, cert_failed) and the next handshake is refused by
// the backoff (counted, cert_backoff_denied).
func TestMetricsAndEventsFailedOrder(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t)})
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	const host = "fail-metrics.example.com"
	r.load(observed(t, r.config(r.acme(map[string]any{"domains": []string{host}, "fail_backoff_minutes": 10}), nil), addr))
	takeEvents()

	failure := map[string]string{"outcome": "failure"}
	failedTimed := map[string]string{"kind": "order", "outcome": "failure"}
	before := scrape(t, addr)
	failures0 := mustSample(t, before, "caddy_acme_orders_total", failure)
	successes0 := mustSample(t, before, "caddy_acme_orders_total", map[string]string{"outcome": "success"})
	denials0 := mustSample(t, before, "caddy_acme_backoff_denials_total", nil)
	timed0, _ := testenv.Sample(before, "caddy_acme_issuance_duration_seconds", failedTimed)

	if _, err := r.handshake(host); err == nil {
		t.Fatal("handshake succeeded although validation cannot")
	}
	failed := scrape(t, addr)
	if d := mustSample(t, failed, "caddy_acme_orders_total", failure) - failures0; d != 1 {
		t.Errorf("orders_total{outcome=failure} grew by %v, want 1", d)
	}
	if d := mustSample(t, failed, "caddy_acme_orders_total", map[string]string{"outcome": "success"}) - successes0; d != 0 {
		t.Errorf("orders_total{outcome=success} grew by %v, want 0", d)
	}
	if d := mustSample(t, failed, "caddy_acme_issuance_duration_seconds", failedTimed) - timed0; d != 1 {
		t.Errorf("issuance_duration_seconds{kind=order,outcome=failure} count grew by %v, want 1", d)
	}
	if d := mustSample(t, failed, "caddy_acme_backoff_denials_total", nil) - denials0; d != 0 {
		t.Errorf("backoff_denials_total grew by %v on the failed order itself, want 0", d)
	}
	ev := takeEvents()
	if len(ev) != 1 || ev[0].name != "cert_failed" || ev[0].origin != "acme" ||
		ev[0].data["identifier"] != host || ev[0].data["renewal"] != false || ev[0].data["error"] == nil {
		t.Fatalf("events after the failed order = %+v, want one cert_failed from acme for %s with renewal false and the error", ev, host)
	}

	if _, err := r.handshake(host); err == nil {
		t.Fatal("handshake during the backoff succeeded")
	}
	denied := scrape(t, addr)
	if d := mustSample(t, denied, "caddy_acme_backoff_denials_total", nil) - denials0; d != 1 {
		t.Errorf("backoff_denials_total grew by %v, want 1", d)
	}
	if d := mustSample(t, denied, "caddy_acme_orders_total", failure) - failures0; d != 1 {
		t.Errorf("orders_total{outcome=failure} grew by %v during the backoff, want still 1", d)
	}
	ev = takeEvents()
	if len(ev) != 1 || ev[0].name != eventBackoffDenied || ev[0].data["identifier"] != host ||
		!strings.Contains(fmt.Sprint(ev[0].data["error"]), "because of previous failure") {
		t.Fatalf("events during the backoff = %+v, want one %s for %s with Kong's message", ev, eventBackoffDenied, host)
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders at Pebble = %d, want 1", n)
	}
}

// notAModule is a storage that is not a Caddy module.
type notAModule struct{ certmagic.Storage }

// day is a day in seconds, the unit of the remaining-lifetime metrics.
const day = 24 * 60 * 60

// TestMetricsStorageBackendLabel: the backend label is the storage module's
// name, whether the storage is the app's own or Caddy's global one.
func TestMetricsStorageBackendLabel(t *testing.T) {
	if got := storageBackend(nil, &certmagic.FileStorage{Path: os.TempDir()}); got != "file_system" {
		t.Errorf("Caddy's default file storage: %q, want file_system", got)
	}
	if got := storageBackend(nil, &redis.Storage{}); got != "acme_redis" {
		t.Errorf("a storage module as Caddy's global storage: %q, want acme_redis", got)
	}
	if got := storageBackend(nil, notAModule{}); got != "caddyacme.notAModule" {
		t.Errorf("a storage that is not a module: %q, want its type", got)
	}

	// an app with `"storage": {"module": "file_system", ...}` records under
	// file_system, keeping TryLock
	app := handApp(t)
	if _, ok := app.storage.(certmagic.TryLocker); !ok {
		t.Fatal("the app's file storage lost TryLock in the instrumentation")
	}
	loads := metricSeries{"caddy_acme_storage_operation_duration_seconds", map[string]string{"backend": "file_system", "operation": "load"}}
	before, _ := loads.histogram()
	if _, err := app.storage.Load(t.Context(), "no/such/key"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing key: %v", err)
	}
	if after, _ := loads.histogram(); after != before+1 {
		t.Errorf("the app's storage recorded %d loads under backend file_system, want 1", after-before)
	}
}
