package renew

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Runner runs a Scanner's scans (make one with NewRunner): first FirstDelay after Run starts (Kong
// waits a whole day), then every Interval (each wait jittered by up to
// ±Jitter of it, so a cluster's nodes do not all try at once), and whenever
// Trigger is called. Triggers that arrive while a scan runs coalesce into one
// more scan after it.
type Runner struct {
	Scanner    *Scanner
	Interval   time.Duration // default 24h
	FirstDelay time.Duration // default 1m
	Jitter     float64       // fraction of Interval; default 0.1
	// OnScan, if set, is called after every scan with its result (ErrBusy
	// when another node held the scan lock).
	OnScan func(Status, error)

	trigger chan struct{}
	nextRun atomic.Int64 // unix nanoseconds of the next periodic scan; 0 while one runs
}

// NewRunner returns a Runner of s's scans with the default timings.
func NewRunner(s *Scanner) *Runner {
	return &Runner{Scanner: s, trigger: make(chan struct{}, 1)}
}

// Trigger asks for a scan as soon as possible without waiting for it. It
// may be called before Run, from any goroutine.
func (r *Runner) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default: // one is already pending
	}
}

// Run scans until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	trigger := r.trigger
	wait := r.FirstDelay
	if wait <= 0 {
		wait = time.Minute
	}
	for {
		r.nextRun.Store(time.Now().Add(wait).UnixNano())
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-trigger:
			timer.Stop()
		}
		r.nextRun.Store(0)
		st, err := r.Scanner.Scan(ctx)
		if r.OnScan != nil {
			r.OnScan(st, err)
		}
		wait = r.next()
	}
}

// Next returns when the next periodic scan starts, or the zero time while
// a scan runs or before Run.
func (r *Runner) Next() time.Time {
	if n := r.nextRun.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// next is the jittered wait until the next periodic scan.
func (r *Runner) next() time.Duration {
	interval := r.Interval
	if interval <= 0 {
		interval = 24 * time.Hour
	}
	jitter := r.Jitter
	if jitter <= 0 || jitter >= 1 {
		jitter = 0.1
	}
	return time.Duration(float64(interval) * (1 + jitter*(2*rand.Float64()-1))) //nolint:gosec // a jitter, not a secret
}
