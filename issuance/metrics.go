package issuance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/renew"
)

// Caddy makes a new Prometheus registry for every config load (the one its
// admin endpoint /metrics serves). The counters and histograms below are
// made once per process and registered into each config's registry
// (RegisterMetrics, from the app's Provision), so their values survive
// config reloads; the state of the certificates is read at scrape time by
// a stateCollector bound to the Runtime of that config. No metric has a
// host label: the number of series does not grow with the number of
// certificates.

// metrics are the process-wide counters and histograms.
var metrics = struct {
	orders           *prometheus.CounterVec
	renewals         *prometheus.CounterVec
	issuanceDuration *prometheus.HistogramVec
	backoffDenials   prometheus.Counter
	budgetDenials    prometheus.Counter
	intakeRefusals   prometheus.Counter
	dropped          prometheus.Counter
	storageDuration  *prometheus.HistogramVec
	storageErrors    *prometheus.CounterVec
}{
	orders: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Name:      "orders_total",
		Help:      "Certificate orders (first issuance of a name) by outcome: success or failure.",
	}, []string{"outcome"}),
	renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Name:      "renewals_total",
		Help:      "Certificate renewals (renewal scans and admin API) by outcome: success or failure.",
	}, []string{"outcome"}),
	issuanceDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: metricsNamespace,
		Name:      "issuance_duration_seconds",
		Help:      "Time from the start of an order or renewal at the CA to its end, by kind (order or renewal) and outcome.",
		Buckets:   []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 300},
	}, []string{"kind", "outcome"}),
	backoffDenials: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Name:      "backoff_denials_total",
		Help:      "TLS handshakes refused because their name is in backoff after a failed order (fail_backoff_minutes).",
	}),
	budgetDenials: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Name:      "budget_denials_total",
		Help:      "TLS handshakes and orders refused because their registered domain had its budget of new certificates (domain_budget).",
	}),
	intakeRefusals: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Name:      "intake_refusals_total",
		Help:      "TLS handshakes refused at once because too many names were waiting for an order on the node (max_pending_orders).",
	}),
	dropped: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Name:      "orders_dropped_total",
		Help:      "Queued orders dropped before reaching the CA because every TLS handshake waiting for them gave up.",
	}),
	storageDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: metricsNamespace,
		Name:      "storage_operation_duration_seconds",
		Help:      "Duration of the app's storage operations by backend (storage module) and operation; lock includes waiting for another holder.",
		Buckets:   []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	}, []string{"backend", "operation"}),
	storageErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Name:      "storage_errors_total",
		Help:      "Failed storage operations by backend and operation (a missing key is not a failure).",
	}, []string{"backend", "operation"}),
}

func init() {
	// export the outcomes at zero before the first one, so that rate()
	// and ratios work from the start
	for _, outcome := range []string{outcomeSuccess, outcomeFailure} {
		metrics.orders.WithLabelValues(outcome)
		metrics.renewals.WithLabelValues(outcome)
	}
}

// RegisterMetrics registers the process-wide metrics and the state of r
// into reg, the registry of r's config (without r's state if r is nil). A
// collector that is already in reg is fine (an app provisioned twice in
// one context).
func RegisterMetrics(reg prometheus.Registerer, r *Runtime) error {
	collectors := []prometheus.Collector{
		metrics.orders,
		metrics.renewals,
		metrics.issuanceDuration,
		metrics.backoffDenials,
		metrics.intakeRefusals,
		metrics.dropped,
		metrics.budgetDenials,
		metrics.storageDuration,
		metrics.storageErrors,
	}
	if r != nil {
		collectors = append(collectors, stateCollector{r})
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
				return err
			}
		}
	}
	return nil
}

// stateCollector exports the state of one runtime's certificates at scrape
// time: how many it holds in memory, and from the last renewal scan's
// status (read from storage at most once a second, never by listing
// storage) how many are stored and when they expire.
type stateCollector struct {
	r *Runtime
}

var (
	descCached = prometheus.NewDesc(metricsNamespace+"_certificates_cached",
		"Certificates of the app held in this node's memory.", nil, nil)
	descManaged = prometheus.NewDesc(metricsNamespace+"_certificates_managed",
		"Certificates in storage at the last renewal scan.", nil, nil)
	descRemaining = prometheus.NewDesc(metricsNamespace+"_certificate_remaining_seconds",
		"Seconds until the certificates of the last renewal scan expire (negative once expired).", nil, nil)
	descMinRemaining = prometheus.NewDesc(metricsNamespace+"_certificate_min_remaining_seconds",
		"Seconds until the first of the certificates of the last renewal scan expires.", nil, nil)
	descLastScan = prometheus.NewDesc(metricsNamespace+"_renewal_scan_timestamp_seconds",
		"Unix time at which the last renewal scan (on any node sharing the storage) ended.", nil, nil)
)

// remainingBuckets are the upper bounds of
// caddy_acme_certificate_remaining_seconds: 1, 3, 7, 14, 30, 60 and 90 days.
var remainingBuckets = []float64{1 * day, 3 * day, 7 * day, 14 * day, 30 * day, 60 * day, 90 * day}

const day = 24 * 60 * 60

// Describe implements prometheus.Collector.
func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCached
	ch <- descManaged
	ch <- descRemaining
	ch <- descMinRemaining
	ch <- descLastScan
}

// Collect implements prometheus.Collector. The storage-derived metrics are
// left out until a first scan has run, or when the status cannot be read
// (the storage error counter counts that).
func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	ch <- prometheus.MustNewConstMetric(descCached, prometheus.GaugeValue, float64(len(r.changes.cachedNames())))

	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	defer cancel()
	st, err := r.loadStatus(ctx)
	if err != nil {
		if r.ctx.Err() == nil {
			r.logger.Warn("reading the renewal scan status for metrics", zap.Error(err))
		}
		return
	}
	if st == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descManaged, prometheus.GaugeValue, float64(st.Checked))
	ch <- prometheus.MustNewConstMetric(descLastScan, prometheus.GaugeValue, float64(st.End.UnixNano())/1e9)

	now := time.Now()
	h := newRemainingHistogram()
	for name, hs := range st.Hosts {
		notAfter := hs.NotAfter
		// a certificate renewed since the scan (by the scan itself, the
		// admin API or another node) is in memory with a later expiry
		if held, ok := r.heldNotAfter(name); ok && held.After(notAfter) {
			notAfter = held
		} else if hs.Renewed {
			continue // renewed, but the new expiry is not known here
		}
		if notAfter.IsZero() {
			continue // the scan could not read it
		}
		h.observe(notAfter.Sub(now).Seconds())
	}
	ch <- prometheus.MustNewConstHistogram(descRemaining, h.count, h.sum, h.buckets)
	if h.count > 0 {
		ch <- prometheus.MustNewConstMetric(descMinRemaining, prometheus.GaugeValue, h.min)
	}
}

// heldNotAfter returns the latest expiry of the certificates for name in
// this node's memory.
func (r *Runtime) heldNotAfter(name string) (time.Time, bool) {
	var latest time.Time
	for _, c := range r.cache.AllMatchingCertificates(name) {
		if c.Leaf != nil && slices.Contains(c.Names, name) && c.Leaf.NotAfter.After(latest) {
			latest = c.Leaf.NotAfter
		}
	}
	return latest, !latest.IsZero()
}

// remainingHistogram accumulates caddy_acme_certificate_remaining_seconds.
type remainingHistogram struct {
	count   uint64
	sum     float64
	min     float64
	buckets map[float64]uint64 // cumulative, by upper bound
}

func newRemainingHistogram() *remainingHistogram {
	h := &remainingHistogram{min: math.Inf(1), buckets: make(map[float64]uint64, len(remainingBuckets))}
	for _, b := range remainingBuckets {
		h.buckets[b] = 0
	}
	return h
}

func (h *remainingHistogram) observe(seconds float64) {
	h.count++
	h.sum += seconds
	h.min = min(h.min, seconds)
	for _, b := range remainingBuckets {
		if seconds <= b {
			h.buckets[b]++
		}
	}
}

const (
	metricsNamespace = "caddy_acme"
	outcomeSuccess   = "success"
	outcomeFailure   = "failure"
)

// issuanceKey identifies one order or renewal in progress.
type issuanceKey struct {
	identifier string
	renewal    bool
}

// issuanceClock times orders and renewals from cert_obtaining to
// cert_obtained or cert_failed. certmagic's issue lock lets one order or
// renewal per name run at a time, so the name and the kind identify it.
type issuanceClock struct {
	mu      sync.Mutex // protects started
	started map[issuanceKey]time.Time
}

// start records that key began at now. An attempt that ended without
// cert_obtained or cert_failed (it failed before reaching the CA, e.g.
// storing the result) leaves an entry behind; the next start for the same
// key replaces it, and the map is swept of entries older than any attempt
// can take when it grows large.
func (c *issuanceClock) start(key issuanceKey, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.started) >= maxPendingIssuances {
		for k, t := range c.started {
			if now.Sub(t) > staleIssuance {
				delete(c.started, k)
			}
		}
	}
	c.started[key] = now
}

// stop counts the end of key's attempt, and observes its duration if its
// start was seen.
func (c *issuanceClock) stop(key issuanceKey, now time.Time, success bool) {
	outcome := outcomeFailure
	if success {
		outcome = outcomeSuccess
	}
	kind, counter := "order", metrics.orders
	if key.renewal {
		kind, counter = "renewal", metrics.renewals
	}
	counter.WithLabelValues(outcome).Inc()

	c.mu.Lock()
	began, ok := c.started[key]
	delete(c.started, key)
	c.mu.Unlock()
	if ok {
		metrics.issuanceDuration.WithLabelValues(kind, outcome).Observe(now.Sub(began).Seconds())
	}
}

// forget drops key's start: the attempt was aborted.
func (c *issuanceClock) forget(key issuanceKey) {
	c.mu.Lock()
	delete(c.started, key)
	c.mu.Unlock()
}

const (
	// maxPendingIssuances is the size at which issuanceClock sweeps.
	maxPendingIssuances = 10000
	// staleIssuance is longer than any order or renewal attempt.
	staleIssuance = time.Hour
)

func newIssuanceClock() *issuanceClock {
	return &issuanceClock{started: make(map[issuanceKey]time.Time)}
}

// loadStatus returns the last scan's status, read from storage at most once
// a second, so that a page of certificates or a scrape does not read it
// once each.
func (r *Runtime) loadStatus(ctx context.Context) (*renew.Status, error) {
	c := &r.status
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.read) < time.Second {
		return c.last, nil
	}
	st, err := r.storedStatus(ctx)
	if err != nil {
		return nil, err
	}
	c.last, c.read = st, time.Now()
	return st, nil
}

// storedStatus returns the last scan's status as stored (nil if none).
func (r *Runtime) storedStatus(ctx context.Context) (*renew.Status, error) {
	data, err := r.storage.Load(ctx, StatusKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st := new(renew.Status)
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("%s: %v", StatusKey, err)
	}
	return st, nil
}

// statusCache is the last scan status read from storage.
type statusCache struct {
	mu   sync.Mutex // protects last and read
	last *renew.Status
	read time.Time
}

// Interface guards
var _ prometheus.Collector = stateCollector{}
