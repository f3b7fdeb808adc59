package caddyacme

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/acmekit/caddy-acme/internal/appconfig"
	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/renew"
	"github.com/acmekit/caddy-acme/storage/redis"
)

// TestMetricsStorageWrapperInterfaces: the wrapper has exactly the optional
// interfaces of the storage it wraps, and its String (which certmagic
// logs) is the inner storage's, secrets redacted.
func TestMetricsStorageWrapperInterfaces(t *testing.T) {
	fileStorage := &certmagic.FileStorage{Path: t.TempDir()}
	redisStorage := &redis.Storage{Addresses: []string{"redis.internal:6379"}, Password: "SECRET-PASSWORD"}
	for _, tc := range []struct {
		name         string
		inner        certmagic.Storage
		try, lease   bool
		stringPrefix string
	}{
		{"neither", struct{ certmagic.Storage }{fileStorage}, false, false, "struct"},
		{"trylock only (file_system)", fileStorage, true, false, "FileStorage:"},
		{"lease only", leaseOnly{fileStorage, redisStorage}, false, true, "caddyacme.leaseOnly"},
		{"both (acme_redis)", redisStorage, true, true, "acme_redis{"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := instrumentStorage(tc.inner, "test")
			if _, ok := s.(certmagic.TryLocker); ok != tc.try {
				t.Errorf("wrapper is a TryLocker: %v, want %v", ok, tc.try)
			}
			if _, ok := s.(certmagic.LockLeaseRenewer); ok != tc.lease {
				t.Errorf("wrapper is a LockLeaseRenewer: %v, want %v", ok, tc.lease)
			}
			str := fmt.Sprint(s)
			if !strings.HasPrefix(str, tc.stringPrefix) || strings.Contains(str, "SECRET") {
				t.Errorf("String() = %q, want the inner storage's (prefix %q), redacted", str, tc.stringPrefix)
			}
			if u := s.(interface{ Unwrap() certmagic.Storage }).Unwrap(); u != tc.inner {
				t.Errorf("Unwrap() = %v, want the inner storage", u)
			}
		})
	}
}

// leaseOnly is a storage with RenewLockLease but no TryLock.
type leaseOnly struct {
	certmagic.Storage
	certmagic.LockLeaseRenewer
}

// TestMetricsStorageWrapperRecords runs every operation through the wrapper
// over Caddy's file storage: each is timed under its backend and operation
// labels, a missing key is not an error, a real failure is.
func TestMetricsStorageWrapperRecords(t *testing.T) {
	const backend = "test_records"
	dir := t.TempDir()
	inner := &certmagic.FileStorage{Path: dir}
	s := instrumentStorage(inner, backend)
	ctx := t.Context()

	before := storageSnapshot(backend)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Store(ctx, "a/b", []byte("value")))
	if v, err := s.Load(ctx, "a/b"); err != nil || string(v) != "value" {
		t.Fatalf("Load = %q, %v", v, err)
	}
	if _, err := s.Load(ctx, "a/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing key: %v, want fs.ErrNotExist unmasked", err)
	}
	if _, err := s.Stat(ctx, "missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat of a missing key: %v, want fs.ErrNotExist", err)
	}
	if !s.Exists(ctx, "a/b") {
		t.Fatal("Exists = false")
	}
	if keys, err := s.List(ctx, "a", false); err != nil || len(keys) != 1 {
		t.Fatalf("List = %v, %v", keys, err)
	}
	if info, err := s.Stat(ctx, "a/b"); err != nil || !info.IsTerminal {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	must(s.Lock(ctx, "l"))
	must(s.Unlock(ctx, "l"))
	ok, err := s.(certmagic.TryLocker).TryLock(ctx, "l")
	if err != nil || !ok {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	must(s.Unlock(ctx, "l"))
	must(s.Delete(ctx, "a/b"))
	// a real failure: "a/b" cannot be a directory while it is a file
	must(s.Store(ctx, "a/b", []byte("file")))
	if err := s.Store(ctx, "a/b/c", []byte("x")); err == nil {
		t.Fatal("Store under a file succeeded")
	}
	after := storageSnapshot(backend)

	wantOps := map[string]uint64{"store": 3, "load": 2, "stat": 2, "exists": 1, "list": 1, "lock": 1, "unlock": 2, "trylock": 1, "delete": 1}
	for op, n := range wantOps {
		if got := after.ops[op] - before.ops[op]; got != n {
			t.Errorf("%s observations = %d, want %d", op, got, n)
		}
	}
	if got := after.errors["store"] - before.errors["store"]; got != 1 {
		t.Errorf("store errors = %v, want 1", got)
	}
	for _, op := range []string{"load", "stat", "exists", "list", "lock", "unlock", "trylock", "delete"} {
		if got := after.errors[op] - before.errors[op]; got != 0 {
			t.Errorf("%s errors = %v, want 0 (a missing key is not an error)", op, got)
		}
	}
}

type storageCounts struct {
	ops    map[string]uint64
	errors map[string]float64
}

// storageSnapshot reads the storage metrics of backend.
func storageSnapshot(backend string) storageCounts {
	c := storageCounts{ops: map[string]uint64{}, errors: map[string]float64{}}
	for _, op := range storageOpNames {
		c.ops[op] = histogramCount(metrics.storageDuration.WithLabelValues(backend, op))
		c.errors[op] = value(metrics.storageErrors.WithLabelValues(backend, op))
	}
	return c
}

// value returns the value of a counter or gauge.
func value(c prometheus.Collector) float64 {
	var m dto.Metric
	if err := c.(prometheus.Metric).Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// histogramCount returns the number of observations of a histogram.
func histogramCount(o prometheus.Observer) uint64 {
	var m dto.Metric
	if err := o.(prometheus.Metric).Write(&m); err != nil {
		panic(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// TestMetricsIssuanceEvents feeds certmagic's events to onEvent: orders
// and renewals are counted by outcome and timed by kind.
func TestMetricsIssuanceEvents(t *testing.T) {
	a := handApp(t)
	ctx := t.Context()
	orders := func(outcome string) float64 { return value(metrics.orders.WithLabelValues(outcome)) }
	renewals := func(outcome string) float64 { return value(metrics.renewals.WithLabelValues(outcome)) }
	timed := func(kind, outcome string) uint64 {
		return histogramCount(metrics.issuanceDuration.WithLabelValues(kind, outcome))
	}
	o0, of0, r0, rf0 := orders(outcomeSuccess), orders(outcomeFailure), renewals(outcomeSuccess), renewals(outcomeFailure)
	to0, tr0, tf0 := timed("order", outcomeSuccess), timed("renewal", outcomeSuccess), timed("order", outcomeFailure)

	emit := func(name string, data map[string]any) {
		t.Helper()
		if err := a.onEvent(ctx, name, data); err != nil {
			t.Fatalf("onEvent(%s): %v", name, err)
		}
	}
	emit("cert_obtaining", map[string]any{"identifier": "a.example.com"})
	emit("cert_obtaining", map[string]any{"identifier": "a.example.com", "renewal": true})
	emit("cert_obtained", map[string]any{"identifier": "a.example.com", "renewal": false})
	emit("cert_obtained", map[string]any{"identifier": "a.example.com", "renewal": true})
	emit("cert_obtaining", map[string]any{"identifier": "b.example.com"})
	emit("cert_failed", map[string]any{"identifier": "b.example.com", "renewal": false})
	emit("cert_failed", map[string]any{"identifier": "c.example.com", "renewal": true}) // start not seen: counted, not timed

	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"orders success", orders(outcomeSuccess) - o0, 1},
		{"orders failure", orders(outcomeFailure) - of0, 1},
		{"renewals success", renewals(outcomeSuccess) - r0, 1},
		{"renewals failure", renewals(outcomeFailure) - rf0, 1},
		{"timed orders", float64(timed("order", outcomeSuccess) - to0), 1},
		{"timed renewals", float64(timed("renewal", outcomeSuccess) - tr0), 1},
		{"timed failed orders", float64(timed("order", outcomeFailure) - tf0), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if n := len(a.issuing.started); n != 0 {
		t.Errorf("%d attempts still timed after they ended", n)
	}
}

// TestMetricsIssuanceClockSweeps: attempts that never ended do not pile up.
func TestMetricsIssuanceClockSweeps(t *testing.T) {
	c := &issuanceClock{started: make(map[issuanceKey]time.Time)}
	old := time.Now().Add(-2 * staleIssuance)
	for i := range maxPendingIssuances {
		c.start(issuanceKey{identifier: strconv.Itoa(i)}, old)
	}
	c.start(issuanceKey{identifier: "new"}, time.Now())
	if n := len(c.started); n != 1 {
		t.Fatalf("%d attempts timed after the sweep, want 1", n)
	}
}

// TestMetricsRegisteredInEveryRegistry: Caddy makes a registry per config
// load; the process-wide metrics go into each with the values they had,
// and registering into the same registry twice is no error.
func TestMetricsRegisteredInEveryRegistry(t *testing.T) {
	a := handApp(t)
	first, second := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
	if err := registerMetrics(first, a); err != nil {
		t.Fatal(err)
	}
	if err := registerMetrics(first, a); err != nil {
		t.Fatalf("registering again: %v", err)
	}
	metrics.backoffDenials.Inc()
	if err := registerMetrics(second, a); err != nil {
		t.Fatal(err)
	}
	want := value(metrics.backoffDenials)
	for i, reg := range []*prometheus.Registry{first, second} {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("gathering registry %d: %v", i, err)
		}
		if got, ok := sample(indexFamilies(mfs), "caddy_acme_backoff_denials_total", nil); !ok || got != want {
			t.Fatalf("registry %d: backoff denials %v (present %v), want %v", i, got, ok, want)
		}
	}
}

// TestMetricsStateCollector exports the last scan's status and the cache.
func TestMetricsStateCollector(t *testing.T) {
	gather := func(a *App) map[string]*dto.MetricFamily {
		t.Helper()
		reg := prometheus.NewPedanticRegistry()
		if err := registerMetrics(reg, a); err != nil {
			t.Fatal(err)
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		return indexFamilies(mfs)
	}

	// before any scan: only the cache
	mfs := gather(handApp(t))
	if _, ok := mfs["caddy_acme_certificates_managed"]; ok {
		t.Fatal("certificates_managed exported before any scan")
	}
	if v, ok := sample(mfs, "caddy_acme_certificates_cached", nil); !ok || v != 0 {
		t.Fatalf("certificates_cached = %v (present %v), want 0", v, ok)
	}

	a := handApp(t)
	now := time.Now()
	renewedNotAfter := now.Add(80 * 24 * time.Hour)
	cacheCert(t, a, "renewed-held.example.com", renewedNotAfter)
	if err := a.onEvent(t.Context(), "cached_managed_cert", map[string]any{"sans": []string{"renewed-held.example.com", "evicted.example.com"}}); err != nil {
		t.Fatal(err)
	}
	st := renew.Status{Start: now.Add(-time.Minute), End: now.Add(-30 * time.Second), Checked: 6, Hosts: map[string]renew.HostStatus{
		"expired.example.com":       {NotAfter: now.Add(-time.Hour)},
		"soon.example.com":          {NotAfter: now.Add(2 * 24 * time.Hour)},
		"week.example.com":          {NotAfter: now.Add(10 * 24 * time.Hour)},
		"renewed-held.example.com":  {NotAfter: now.Add(5 * 24 * time.Hour), Renewed: true},
		"renewed-elsewhere.example": {NotAfter: now.Add(5 * 24 * time.Hour), Renewed: true},
		"unreadable.example.com":    {LastError: "loading certificate: boom"},
	}}
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.storage.Store(t.Context(), renewStatusKey, data); err != nil {
		t.Fatal(err)
	}

	mfs = gather(a)
	if got, ok := sample(mfs, "caddy_acme_certificates_managed", nil); !ok || got != 6 {
		t.Errorf("certificates_managed = %v (present %v), want 6", got, ok)
	}
	if got, ok := sample(mfs, "caddy_acme_certificates_cached", nil); !ok || got != 1 {
		t.Errorf("certificates_cached = %v (present %v), want 1 (evicted.example.com is not in memory)", got, ok)
	}
	if got, ok := sample(mfs, "caddy_acme_renewal_scan_timestamp_seconds", nil); !ok || got < float64(st.End.Unix()) || got > float64(st.End.Unix()+1) {
		t.Errorf("renewal_scan_timestamp_seconds = %v (present %v), want %d", got, ok, st.End.Unix())
	}
	// expired, soon, week, and renewed-held with its new expiry (80 days);
	// renewed-elsewhere's new expiry is unknown here, unreadable has none
	h := mfs["caddy_acme_certificate_remaining_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 4 {
		t.Fatalf("remaining_seconds count = %d, want 4", h.GetSampleCount())
	}
	wantBuckets := map[float64]uint64{1 * day: 1, 3 * day: 2, 7 * day: 2, 14 * day: 3, 30 * day: 3, 60 * day: 3, 90 * day: 4}
	for _, b := range h.GetBucket() {
		if want := wantBuckets[b.GetUpperBound()]; b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
	if got, ok := sample(mfs, "caddy_acme_certificate_min_remaining_seconds", nil); !ok || got > -3590 || got < -3610 {
		t.Errorf("min_remaining_seconds = %v (present %v), want about -3600 (the expired one)", got, ok)
	}
}

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

// cacheCert puts a self-signed certificate for name into a's cache.
func cacheCert(t *testing.T, a *App, name string, notAfter time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.magic.CacheUnmanagedTLSCertificate(t.Context(), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil); err != nil {
		t.Fatal(err)
	}
}

// indexFamilies maps metric families by name.
func indexFamilies(mfs []*dto.MetricFamily) map[string]*dto.MetricFamily {
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// sample returns the value of the series of family name whose labels
// include labels: a counter's or gauge's value, a histogram's count.
func sample(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		for k, v := range labels {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
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
			"events":   []string{"cert_obtained", "cert_failed", eventBackoffDenied},
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
	v, ok := sample(mfs, name, labels)
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
	timed0, _ := sample(before, "caddy_acme_issuance_duration_seconds", map[string]string{"kind": "order", "outcome": "success"})
	fsOps := func(mfs map[string]*dto.MetricFamily, op string) float64 {
		v, _ := sample(mfs, "caddy_acme_storage_operation_duration_seconds", map[string]string{"backend": "file_system", "operation": op})
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
		if v, ok := sample(mfs, "caddy_acme_certificates_managed", nil); ok && v == 1 {
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
	timed0, _ := sample(before, "caddy_acme_issuance_duration_seconds", failedTimed)

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

// TestMetricsStorageBackendLabel: the backend label is the storage module's
// name, whether the storage is the app's own or Caddy's global one.
func TestMetricsStorageBackendLabel(t *testing.T) {
	if got := storageBackend(nil, &certmagic.FileStorage{Path: os.TempDir()}); got != "file_system" {
		t.Errorf("Caddy's default file storage: %q, want file_system", got)
	}
	if got := storageBackend(nil, &redis.Storage{}); got != "acme_redis" {
		t.Errorf("a storage module as Caddy's global storage: %q, want acme_redis", got)
	}
	if got := storageBackend(nil, leaseOnly{}); got != "caddyacme.leaseOnly" {
		t.Errorf("a storage that is not a module: %q, want its type", got)
	}

	// an app with `"storage": {"module": "file_system", ...}` records under
	// file_system, keeping TryLock
	s, ok := handApp(t).storage.(instrumentedTryStorage)
	if !ok {
		t.Fatal("the app's file storage is not instrumented with TryLock")
	}
	if s.m.duration[opLoad] != metrics.storageDuration.WithLabelValues("file_system", "load") {
		t.Error("the app's storage does not record under backend file_system")
	}
}
