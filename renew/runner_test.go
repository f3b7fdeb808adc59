package renew

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunner(t *testing.T) {
	store := &memStore{certs: map[string]Cert{"a.example": {NotBefore: t0, NotAfter: t0.Add(90 * day)}}}
	scans := make(chan Status, 10)
	var count atomic.Int32
	r := NewRunner(&Scanner{Store: store, Policy: Policy{Threshold: 14 * day}, Clock: fakeClock{t0}})
	r.Interval, r.FirstDelay = time.Hour, 10*time.Millisecond
	r.OnScan = func(st Status, err error) {
		if err != nil {
			t.Errorf("scan: %v", err)
		}
		count.Add(1)
		scans <- st
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()

	wantScan := func(why string) {
		t.Helper()
		select {
		case st := <-scans:
			if st.Checked != 1 {
				t.Fatalf("%s: scan checked %d certificates, want 1", why, st.Checked)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no scan", why)
		}
	}
	wantScan("first scan soon after start")
	var next time.Time
	for deadline := time.Now().Add(30 * time.Second); next.IsZero() && time.Now().Before(deadline); next = r.Next() {
		time.Sleep(time.Millisecond) // OnScan runs before the next wait is set
	}
	if d := time.Until(next); d < 50*time.Minute || d > 70*time.Minute {
		t.Fatalf("Next() = %s from now, want the periodic scan an hour (±10%%) away", d)
	}
	r.Trigger()
	wantScan("triggered scan")
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if n := count.Load(); n != 2 {
		t.Fatalf("%d scans, want 2 (the next periodic one is an hour away)", n)
	}
}

func TestRunnerNextBeforeRun(t *testing.T) {
	if next := NewRunner(&Scanner{}).Next(); !next.IsZero() {
		t.Fatalf("Next() before Run = %s, want zero", next)
	}
}

func TestRunnerJitter(t *testing.T) {
	r := &Runner{Interval: time.Hour, Jitter: 0.1}
	for range 1000 {
		if d := r.next(); d < 54*time.Minute || d > 66*time.Minute {
			t.Fatalf("next = %s, want within 10%% of an hour", d)
		}
	}
}
