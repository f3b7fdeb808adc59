package issuance

import (
	"errors"
	"io/fs"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestOrderingElsewhereSkipsTheQueue: a name whose issue lock another
// node holds (it is ordering the name) takes no turn in this node's queue:
// the job waits for the lock instead. Probing the lock gives it back.
func TestOrderingElsewhereSkipsTheQueue(t *testing.T) {
	ca := startCA(t, testenv.PebbleOptions{})
	// the queue's only turn of the hour
	r := newTestRuntime(t, ca, nil, Options{OrderEvents: 1, OrderWindow: time.Hour})
	ctx := t.Context()
	const name = "x.elsewhere.example.com"
	tl := r.storage.(certmagic.TryLocker)

	if r.orderingElsewhere(name) {
		t.Fatal("a free issue lock reported held")
	}
	if ok, err := tl.TryLock(ctx, IssueLockKey(name)); !ok || err != nil {
		t.Fatalf("the probe kept the issue lock: TryLock = %v, %v", ok, err)
	}
	// held now, as by another node ordering the name
	if !r.orderingElsewhere(name) {
		t.Fatal("a held issue lock reported free")
	}

	// the queue's only turn goes to another name
	r.mustGet(t, "first.elsewhere.example.com")
	go func() { _, _ = r.get(ctx, name) }()
	deadline := time.Now().Add(10 * time.Second)
	for !r.Running(name) {
		if time.Now().After(deadline) {
			t.Fatal("no job started for the name")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Second) // the job probes the lock, then would queue
	if n := r.queue.waiting.Load(); n != 0 {
		t.Fatalf("%d orders waiting in the queue, want 0: the name is being ordered elsewhere", n)
	}
	if err := r.storage.Unlock(ctx, IssueLockKey(name)); err != nil {
		t.Fatal(err)
	}
}

// TestBurstQueuedBeyondIssueTimeout: more new names at once than the
// node may order within IssueTimeout (here 1 order per 6 s, IssueTimeout
// 5 s). Every name is ordered exactly once and served — a first request
// that gives up at IssueTimeout is followed by one that gets the
// certificate — and no order fails and no name goes into backoff: the
// orders wait in the queue, and IssueTimeout counts from when they leave it
// (without the queue they would run out of time and be placed again by a
// later request).
func TestBurstQueuedBeyondIssueTimeout(t *testing.T) {
	names := []string{"q1.example.com", "q2.example.com", "q3.example.com"}
	failedOrders := value(metrics.orders.WithLabelValues(outcomeFailure))
	ca := startCA(t, testenv.PebbleOptions{})
	r := newTestRuntime(t, ca, nil, Options{
		IssueTimeout: 5 * time.Second,
		FailBackoff:  5 * time.Minute,
		OrderEvents:  1,
		OrderWindow:  6 * time.Second,
	})

	var mu sync.Mutex
	failedFirst := 0
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() {
			deadline := time.Now().Add(60 * time.Second)
			for attempt := 0; ; attempt++ {
				_, err := r.get(t.Context(), name)
				if err == nil {
					return
				}
				if attempt == 0 {
					mu.Lock()
					failedFirst++
					mu.Unlock()
				}
				if time.Now().After(deadline) {
					t.Errorf("%s not served within 60 s: %v", name, err)
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.Logf("pebble log:\n%s", ca.pebble.Log())
		return
	}
	if n := ca.pebble.Orders(); n != len(names) {
		t.Errorf("%d names placed %d orders, want one each", len(names), n)
	}
	if n := value(metrics.orders.WithLabelValues(outcomeFailure)) - failedOrders; n != 0 {
		t.Errorf("%v orders failed, want none", n)
	}
	if failedFirst == 0 {
		t.Error("every first request was served: the burst did not outlast IssueTimeout, so this test shows nothing")
	}
	for _, name := range names {
		r.mustGet(t, name)
		if _, err := r.storage.Load(t.Context(), BackoffKey(r.caKey(), name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("backoff of %s after a queued order: %v, want none", name, err)
		}
	}
}

// TestRenewedElsewhereReachesCache: a certificate renewed by another node
// (here: renewed in storage without touching this node's memory) replaces
// the one this node serves when it compares its memory with storage (at
// every scan); one deleted from storage behind its back is dropped.
func TestRenewedElsewhereReachesCache(t *testing.T) {
	ca := startCA(t, testenv.PebbleOptions{})
	r := newTestRuntime(t, ca, nil, Options{})
	const name = "shared.example.com"
	first := r.mustGet(t, name)

	if err := r.magic.RenewCertSync(t.Context(), name, true); err != nil {
		t.Fatal(err)
	}
	if still := r.mustGet(t, name); !still.Equal(first) {
		t.Fatal("memory changed before the refresh (the test no longer shows anything)")
	}
	n, err := r.refreshCached(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("refreshCached = %d, %v; want 1 replaced", n, err)
	}
	if again := r.mustGet(t, name); again.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("still serving the old certificate after the refresh")
	}
	if n, err := r.refreshCached(t.Context()); err != nil || n != 0 {
		t.Fatalf("second refreshCached = %d, %v; want nothing to do", n, err)
	}

	// deleted from storage by someone else, without a change logged: the
	// full refresh drops it from memory
	if err := r.storage.Delete(t.Context(), Site(r.issuer.IssuerKey(), name).Cert); err != nil {
		t.Fatal(err)
	}
	if n, err := r.refreshCached(t.Context()); err != nil || n != 1 {
		t.Fatalf("refreshCached after the delete = %d, %v; want 1 dropped", n, err)
	}
	if c := r.cachedFor(name); len(c) != 0 {
		t.Fatalf("%d certificates still in memory after their deletion", len(c))
	}
}
