package issuance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/renew"
)

// TestMetricsStorageWrapperInterfaces: the wrapper has exactly the optional
// interfaces of the storage it wraps, and its String (which certmagic
// logs) is the inner storage's, secrets redacted.
func TestMetricsStorageWrapperInterfaces(t *testing.T) {
	fileStorage := &certmagic.FileStorage{Path: t.TempDir()}
	both := &tryLeaseStorage{FileStorage: fileStorage, password: "SECRET-PASSWORD"}
	for _, tc := range []struct {
		name         string
		inner        certmagic.Storage
		try, lease   bool
		stringPrefix string
	}{
		{"neither", struct{ certmagic.Storage }{fileStorage}, false, false, "struct"},
		{"trylock only (file_system)", fileStorage, true, false, "FileStorage:"},
		{"lease only", leaseOnly{fileStorage, both}, false, true, "issuance.leaseOnly"},
		{"both (as acme_redis)", both, true, true, "secret_store{"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := InstrumentStorage(tc.inner, "test")
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

// tryLeaseStorage is a storage with TryLock and RenewLockLease, and a
// secret its String redacts, as acme_redis.
type tryLeaseStorage struct {
	*certmagic.FileStorage
	password string
}

func (*tryLeaseStorage) RenewLockLease(context.Context, string, time.Duration) error { return nil }

func (s *tryLeaseStorage) String() string {
	if s.password == "" {
		return "secret_store{}"
	}
	return "secret_store{password: (redacted)}"
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
	s := InstrumentStorage(inner, backend)
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

// TestMetricsIssuanceEvents feeds certmagic's events to HandleEvent: orders
// and renewals are counted by outcome and timed by kind.
func TestMetricsIssuanceEvents(t *testing.T) {
	r := buildRuntime(t, noCA, nil, Options{})
	ctx := t.Context()
	orders := func(outcome string) float64 { return value(metrics.orders.WithLabelValues(outcome)) }
	renewals := func(outcome string) float64 { return value(metrics.renewals.WithLabelValues(outcome)) }
	timed := func(kind, outcome string) uint64 {
		return histogramCount(metrics.issuanceDuration.WithLabelValues(kind, outcome))
	}
	o0, of0, r0, rf0 := orders(outcomeSuccess), orders(outcomeFailure), renewals(outcomeSuccess), renewals(outcomeFailure)
	to0, tr0, tf0 := timed("order", outcomeSuccess), timed("renewal", outcomeSuccess), timed("order", outcomeFailure)

	emit := func(name string, data map[string]any) { r.HandleEvent(ctx, name, data) }
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
	if n := len(r.clock.started); n != 0 {
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
	r := buildRuntime(t, noCA, nil, Options{})
	first, second := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
	if err := RegisterMetrics(first, r.Runtime); err != nil {
		t.Fatal(err)
	}
	if err := RegisterMetrics(first, r.Runtime); err != nil {
		t.Fatalf("registering again: %v", err)
	}
	metrics.backoffDenials.Inc()
	if err := RegisterMetrics(second, r.Runtime); err != nil {
		t.Fatal(err)
	}
	want := value(metrics.backoffDenials)
	for i, reg := range []*prometheus.Registry{first, second} {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("gathering registry %d: %v", i, err)
		}
		if got, ok := testenv.Sample(testenv.IndexFamilies(mfs), "caddy_acme_backoff_denials_total", nil); !ok || got != want {
			t.Fatalf("registry %d: backoff denials %v (present %v), want %v", i, got, ok, want)
		}
	}
}

// TestMetricsStateCollector exports the last scan's status and the cache.
func TestMetricsStateCollector(t *testing.T) {
	gather := func(r *testRuntime) map[string]*dto.MetricFamily {
		t.Helper()
		reg := prometheus.NewPedanticRegistry()
		if err := RegisterMetrics(reg, r.Runtime); err != nil {
			t.Fatal(err)
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		return testenv.IndexFamilies(mfs)
	}

	// before any scan: only the cache
	mfs := gather(buildRuntime(t, noCA, nil, Options{}))
	if _, ok := mfs["caddy_acme_certificates_managed"]; ok {
		t.Fatal("certificates_managed exported before any scan")
	}
	if v, ok := testenv.Sample(mfs, "caddy_acme_certificates_cached", nil); !ok || v != 0 {
		t.Fatalf("certificates_cached = %v (present %v), want 0", v, ok)
	}

	r := buildRuntime(t, noCA, nil, Options{})
	now := time.Now()
	renewedNotAfter := now.Add(80 * 24 * time.Hour)
	cacheCert(t, r, "renewed-held.example.com", renewedNotAfter)
	r.HandleEvent(t.Context(), "cached_managed_cert", map[string]any{"sans": []string{"renewed-held.example.com", "evicted.example.com"}})
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
	if err := r.storage.Store(t.Context(), StatusKey, data); err != nil {
		t.Fatal(err)
	}

	mfs = gather(r)
	if got, ok := testenv.Sample(mfs, "caddy_acme_certificates_managed", nil); !ok || got != 6 {
		t.Errorf("certificates_managed = %v (present %v), want 6", got, ok)
	}
	if got, ok := testenv.Sample(mfs, "caddy_acme_certificates_cached", nil); !ok || got != 1 {
		t.Errorf("certificates_cached = %v (present %v), want 1 (evicted.example.com is not in memory)", got, ok)
	}
	if got, ok := testenv.Sample(mfs, "caddy_acme_renewal_scan_timestamp_seconds", nil); !ok || got < float64(st.End.Unix()) || got > float64(st.End.Unix()+1) {
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
	if got, ok := testenv.Sample(mfs, "caddy_acme_certificate_min_remaining_seconds", nil); !ok || got > -3590 || got < -3610 {
		t.Errorf("min_remaining_seconds = %v (present %v), want about -3600 (the expired one)", got, ok)
	}
}
