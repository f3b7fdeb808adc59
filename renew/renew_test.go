package renew

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const day = 24 * time.Hour

var t0 = time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)

func TestRenewAt(t *testing.T) {
	p := Policy{Threshold: 14 * day}
	for _, tc := range []struct {
		name string
		c    Cert
		want time.Time
	}{
		{"90-day certificate: 14 days before expiry", Cert{NotBefore: t0, NotAfter: t0.Add(90 * day)}, t0.Add(76 * day)},
		{"6-day certificate: capped at half its lifetime", Cert{NotBefore: t0, NotAfter: t0.Add(6 * day)}, t0.Add(3 * day)},
		{"ARI window earlier", Cert{NotBefore: t0, NotAfter: t0.Add(90 * day), ARIStart: t0.Add(10 * day), ARIEnd: t0.Add(11 * day)}, t0.Add(10 * day)},
		{"ARI window later is ignored", Cert{NotBefore: t0, NotAfter: t0.Add(90 * day), ARIStart: t0.Add(80 * day), ARIEnd: t0.Add(81 * day)}, t0.Add(76 * day)},
		{"inverted ARI window is ignored", Cert{NotBefore: t0, NotAfter: t0.Add(90 * day), ARIStart: t0.Add(10 * day), ARIEnd: t0.Add(9 * day)}, t0.Add(76 * day)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.RenewAt(tc.c); !got.Equal(tc.want) {
				t.Fatalf("RenewAt = %s, want %s", got, tc.want)
			}
			if p.Due(tc.c, tc.want.Add(-time.Second)) || !p.Due(tc.c, tc.want) {
				t.Fatalf("Due is not exactly from %s on", tc.want)
			}
		})
	}
	if got := (Policy{}).RenewAt(Cert{NotBefore: t0, NotAfter: t0.Add(day)}); !got.Equal(t0.Add(day)) {
		t.Fatalf("threshold 0: RenewAt = %s, want the expiry", got)
	}
}

type fakeClock struct{ now time.Time }

func (c fakeClock) Now() time.Time { return c.now }

// memStore is an in-memory Store for the scanner's logic.
type memStore struct {
	mu      sync.Mutex // protects all below
	certs   map[string]Cert
	fail    map[string]error
	locked  bool
	renewed []string
	status  *Status

	inflight, maxInflight atomic.Int32
}

func (m *memStore) Names(context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var names []string
	for n := range m.certs {
		names = append(names, n)
	}
	return names, nil
}

func (m *memStore) Cert(_ context.Context, name string) (Cert, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.certs[name], nil
}

func (m *memStore) Renew(_ context.Context, name string) error {
	if v := m.inflight.Add(1); v > m.maxInflight.Load() {
		m.maxInflight.Store(v)
	}
	defer m.inflight.Add(-1)
	time.Sleep(2 * time.Millisecond)
	m.mu.Lock()
	defer m.mu.Unlock()
	if name == "panics.example" {
		panic("boom")
	}
	if err := m.fail[name]; err != nil {
		return err
	}
	m.renewed = append(m.renewed, name)
	return nil
}

func (m *memStore) TryLock(context.Context, string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.locked {
		return false, nil
	}
	m.locked = true
	return true, nil
}

func (m *memStore) Unlock(context.Context, string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.locked = false
	return nil
}

func (m *memStore) SaveStatus(_ context.Context, s Status) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.status = &s
	return nil
}

func TestScan(t *testing.T) {
	now := t0.Add(80 * day)
	store := &memStore{
		certs: map[string]Cert{
			"due.example":      {Name: "due.example", NotBefore: t0, NotAfter: t0.Add(90 * day)},
			"fresh.example":    {Name: "fresh.example", NotBefore: t0.Add(70 * day), NotAfter: t0.Add(160 * day)},
			"failing.example":  {Name: "failing.example", NotBefore: t0, NotAfter: t0.Add(85 * day)},
			"panics.example":   {Name: "panics.example", NotBefore: t0, NotAfter: t0.Add(85 * day)},
			"expired.example":  {Name: "expired.example", NotBefore: t0, NotAfter: t0.Add(50 * day)},
			"shortlived.examp": {Name: "shortlived.examp", NotBefore: now.Add(-4 * day), NotAfter: now.Add(2 * day)},
		},
		fail: map[string]error{"failing.example": errors.New("urn:ietf:params:acme:error:rateLimited")},
	}
	s := &Scanner{Store: store, Policy: Policy{Threshold: 14 * day}, Clock: fakeClock{now}, Node: "node-a", Concurrency: 2}
	st, err := s.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Checked != 6 || st.Due != 5 || st.Renewed != 3 || st.Failed != 2 {
		t.Fatalf("status = checked %d, due %d, renewed %d, failed %d; want 6, 5, 3, 2", st.Checked, st.Due, st.Renewed, st.Failed)
	}
	if h := st.Hosts["failing.example"]; h.Renewed || !strings.Contains(h.LastError, "rateLimited") {
		t.Fatalf("failing host status = %+v", h)
	}
	if h := st.Hosts["panics.example"]; !strings.Contains(h.LastError, "panic: boom") {
		t.Fatalf("panicking host status = %+v", h)
	}
	if h := st.Hosts["fresh.example"]; h.Renewed || h.LastError != "" || !h.RenewAt.Equal(t0.Add(146*day)) {
		t.Fatalf("fresh host status = %+v", h)
	}
	if store.status == nil || store.status.Renewed != 3 || store.status.Node != "node-a" {
		t.Fatalf("saved status = %+v", store.status)
	}
	if m := store.maxInflight.Load(); m > 2 {
		t.Fatalf("%d renewals at once, want at most 2", m)
	}
	if store.locked {
		t.Fatal("scan lock not released")
	}
}

func TestScanBusy(t *testing.T) {
	store := &memStore{certs: map[string]Cert{"due.example": {NotBefore: t0, NotAfter: t0.Add(day)}}, locked: true}
	s := &Scanner{Store: store, Policy: Policy{Threshold: 14 * day}, Clock: fakeClock{t0.Add(day)}}
	if _, err := s.Scan(context.Background()); !errors.Is(err, ErrBusy) {
		t.Fatalf("Scan with the lock held elsewhere: %v, want ErrBusy", err)
	}
	if len(store.renewed) != 0 || store.status != nil {
		t.Fatal("a busy scan did something")
	}
}

// batchStore is a memStore read in batches; it records the batch sizes,
// fails to read "unreadable.example" and panics on a batch holding
// "batchpanic.example".
type batchStore struct {
	*memStore
	batches []int
}

func (b *batchStore) Certs(_ context.Context, names []string) ([]Cert, []error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batches = append(b.batches, len(names))
	certs, errs := make([]Cert, len(names)), make([]error, len(names))
	for i, name := range names {
		if name == "batchpanic.example" {
			panic("batch boom")
		}
		if name == "unreadable.example" {
			errs[i] = errors.New("not a certificate")
			continue
		}
		certs[i] = b.certs[name]
	}
	return certs, errs
}

func TestScanBatches(t *testing.T) {
	now := t0.Add(80 * day)
	certs := make(map[string]Cert)
	for i := range 10 {
		name := fmt.Sprintf("h%02d.example", i)
		certs[name] = Cert{NotBefore: t0, NotAfter: t0.Add(160 * day)} // not due
	}
	certs["due.example"] = Cert{NotBefore: t0, NotAfter: t0.Add(90 * day)}
	certs["unreadable.example"] = Cert{}
	store := &batchStore{memStore: &memStore{certs: certs}}
	// one batch at a time, so that they are read in order (TestScanReadsAhead
	// reads ahead)
	s := &Scanner{Store: store, Policy: Policy{Threshold: 14 * day}, Clock: fakeClock{now}, BatchSize: 5, BatchesInFlight: 1}
	st, err := s.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{5, 5, 2}; !slices.Equal(store.batches, want) {
		t.Fatalf("batches %v, want %v", store.batches, want)
	}
	if st.Checked != 12 || st.Renewed != 1 || st.Failed != 1 {
		t.Fatalf("status = %+v, want 12 checked, 1 renewed, 1 failed", st)
	}
	if h := st.Hosts["unreadable.example"]; !strings.Contains(h.LastError, "not a certificate") {
		t.Fatalf("unreadable host status = %+v", h)
	}
	if h := st.Hosts["h03.example"]; h.LastError != "" || !h.RenewAt.Equal(t0.Add(146*day)) {
		t.Fatalf("h03 status = %+v: the batch lost the certificate's name or facts", h)
	}

	// a panicking batch fails its own names only
	certs["batchpanic.example"] = Cert{}
	store.batches = nil
	st, err = s.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// sorted: batchpanic, due, h00, h01, h02 | h03…h07 | h08, h09, unreadable
	if st.Checked != 13 || st.Failed != 6 || st.Renewed != 0 {
		t.Fatalf("status with a panicking batch = %+v, want the batch's 5 names and unreadable failed, the others checked", st)
	}
	if h := st.Hosts["batchpanic.example"]; !strings.Contains(h.LastError, "panic: batch boom") {
		t.Fatalf("batchpanic host status = %+v", h)
	}
}

// overlapStore is a batchStore that counts the Certs calls in progress;
// unless second is nil, the first waits (up to a minute) until a second
// one has started.
type overlapStore struct {
	*batchStore
	inflight, max atomic.Int32
	second        chan struct{}
	calls         atomic.Int32
}

func (o *overlapStore) Certs(ctx context.Context, names []string) ([]Cert, []error) {
	n := o.inflight.Add(1)
	defer o.inflight.Add(-1)
	for m := o.max.Load(); n > m && !o.max.CompareAndSwap(m, n); m = o.max.Load() {
	}
	switch o.calls.Add(1) {
	case 1:
		if o.second != nil {
			select {
			case <-o.second:
			case <-time.After(time.Minute):
			}
		}
	case 2:
		if o.second != nil {
			close(o.second)
		}
	}
	return o.batchStore.Certs(ctx, names)
}

// TestScanReadsAhead: the next batch is read while the previous one is
// (the storage and the parsing at the same time), never more than
// BatchesInFlight at once (2 by default), and every certificate is checked
// once; with BatchesInFlight 1, one at a time.
func TestScanReadsAhead(t *testing.T) {
	certs := make(map[string]Cert)
	for i := range 50 {
		certs[fmt.Sprintf("h%02d.example", i)] = Cert{NotBefore: t0, NotAfter: t0.Add(160 * day)}
	}
	certs["due.example"] = Cert{NotBefore: t0, NotAfter: t0.Add(90 * day)}
	store := &overlapStore{batchStore: &batchStore{memStore: &memStore{certs: certs}}, second: make(chan struct{})}
	s := &Scanner{Store: store, Policy: Policy{Threshold: 14 * day}, Clock: fakeClock{t0.Add(80 * day)}, BatchSize: 4}
	st, err := s.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if m := store.max.Load(); m != 2 {
		t.Fatalf("%d batches read at once at most, want 2", m)
	}
	if got := store.calls.Load(); got != 13 {
		t.Fatalf("%d batches read, want 13 (51 names by 4)", got)
	}
	if st.Checked != 51 || st.Renewed != 1 || st.Failed != 0 || len(st.Hosts) != 51 {
		t.Fatalf("status = checked %d, renewed %d, failed %d, hosts %d; want 51, 1, 0, 51", st.Checked, st.Renewed, st.Failed, len(st.Hosts))
	}
	if !slices.Equal(store.renewed, []string{"due.example"}) {
		t.Fatalf("renewed %v, want [due.example]", store.renewed)
	}

	one := &overlapStore{batchStore: &batchStore{memStore: &memStore{certs: certs}}}
	s = &Scanner{Store: one, Policy: s.Policy, Clock: s.Clock, BatchSize: 4, BatchesInFlight: 1}
	if st, err = s.Scan(context.Background()); err != nil || st.Checked != 51 {
		t.Fatalf("Scan with BatchesInFlight 1: checked %d, %v; want 51, nil", st.Checked, err)
	}
	if m := one.max.Load(); m != 1 {
		t.Fatalf("%d batches read at once with BatchesInFlight 1, want 1", m)
	}
}

// TestScanCancelled: a scan whose context ends stops reading batches and
// returns the context's error, with what it checked saved.
func TestScanCancelled(t *testing.T) {
	certs := make(map[string]Cert)
	for i := range 40 {
		certs[fmt.Sprintf("h%02d.example", i)] = Cert{NotBefore: t0, NotAfter: t0.Add(160 * day)}
	}
	ctx, cancel := context.WithCancel(context.Background())
	store := &cancelStore{batchStore: &batchStore{memStore: &memStore{certs: certs}}, cancel: cancel}
	s := &Scanner{Store: store, Policy: Policy{Threshold: 14 * day}, Clock: fakeClock{t0.Add(80 * day)}, BatchSize: 4}
	st, err := s.Scan(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Scan = %v, want context.Canceled", err)
	}
	if n := len(store.batches); n > 3 {
		t.Fatalf("%d batches read after the context ended at the first, want at most 3 (2 in flight, 1 started before)", n)
	}
	if st.Checked > 4 || store.status == nil || store.status.Checked != st.Checked {
		t.Fatalf("checked %d (saved %+v), want at most the first batch, saved", st.Checked, store.status)
	}
}

// cancelStore ends the scan's context during its first batch read.
type cancelStore struct {
	*batchStore
	cancel context.CancelFunc
}

func (c *cancelStore) Certs(ctx context.Context, names []string) ([]Cert, []error) {
	c.cancel()
	return c.batchStore.Certs(ctx, names)
}
