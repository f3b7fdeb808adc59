package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// Bench measures a storage: Store, Load, Stat and Exists of 1 KiB values,
// List of one directory of 10 children among 1 000 and then 10 000 keys (its
// cost must not grow with the total), and the handoff of a lock from one node
// to another waiting for it. Each reports p50-ns and p99-ns besides ns/op;
// LockHandoff's ns/op includes the setup of each handoff, its percentiles do
// not.
func Bench(b *testing.B, open Opener) {
	ctx := context.Background()
	name := ns(b)
	s := open(b, name)
	value := bytes.Repeat([]byte("0123456789abcdef"), 64)

	b.Run("Store", func(b *testing.B) {
		i := 0
		Timed(b, func() error {
			i++
			return s.Store(ctx, fmt.Sprintf("bench/store/%d", i%64), value)
		})
	})
	store(b, s, "bench/load/key", value)
	b.Run("Load", func(b *testing.B) {
		Timed(b, func() error {
			_, err := s.Load(ctx, "bench/load/key")
			return err
		})
	})
	b.Run("Stat", func(b *testing.B) {
		Timed(b, func() error {
			_, err := s.Stat(ctx, "bench/load/key")
			return err
		})
	})
	b.Run("Exists", func(b *testing.B) {
		Timed(b, func() error {
			if !s.Exists(ctx, "bench/load/key") {
				return errors.New("exists returned false")
			}
			return nil
		})
	})

	for i := range 10 {
		store(b, s, fmt.Sprintf("bench/list/dir/child%d", i), value[:16])
	}
	filled := 0
	for _, total := range []int{1000, 10000} {
		for ; filled < total; filled++ {
			store(b, s, fmt.Sprintf("bench/list/other%d/key%d", filled%100, filled), value[:16])
		}
		b.Run(fmt.Sprintf("List/total=%d", total), func(b *testing.B) {
			Timed(b, func() error {
				keys, err := s.List(ctx, "bench/list/dir", false)
				if err == nil && len(keys) != 10 {
					err = fmt.Errorf("listed %d keys, want 10", len(keys))
				}
				return err
			})
		})
	}

	b.Run("LockHandoff", func(b *testing.B) {
		a, other := s, open(b, name)
		var handoffs []time.Duration
		for b.Loop() {
			if err := a.Lock(ctx, "bench_handoff"); err != nil {
				b.Fatal(err)
			}
			got := make(chan time.Time, 1)
			errs := make(chan error, 1)
			go func() {
				if err := other.Lock(ctx, "bench_handoff"); err != nil {
					errs <- err
					return
				}
				got <- time.Now()
			}()
			time.Sleep(20 * time.Millisecond) // let the other node wait
			start := time.Now()
			if err := a.Unlock(ctx, "bench_handoff"); err != nil {
				b.Fatal(err)
			}
			select {
			case at := <-got:
				handoffs = append(handoffs, at.Sub(start))
			case err := <-errs:
				b.Fatal(err)
			}
			if err := other.Unlock(ctx, "bench_handoff"); err != nil {
				b.Fatal(err)
			}
		}
		report(b, handoffs)
	})
}

// Timed runs op b.N times (b.Loop) and reports its p50 and p99 latency
// besides ns/op. Backends use it for the raw driver's operations too, so the
// figures compare.
func Timed(b *testing.B, op func() error) {
	b.Helper()
	var times []time.Duration
	for b.Loop() {
		start := time.Now()
		if err := op(); err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(start))
	}
	report(b, times)
}

func report(b *testing.B, times []time.Duration) {
	if len(times) == 0 {
		return
	}
	slices.Sort(times)
	b.ReportMetric(float64(times[len(times)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(times[(len(times)*99)/100].Nanoseconds()), "p99-ns")
}

// Pair is a storage operation and the raw driver call it is compared with
// (Paired).
type Pair struct {
	Name         string
	Storage, Raw func() error
	Setup        func() error // untimed, before each iteration; may be nil
}

// Paired runs each pair as a sub-benchmark that alternates the storage
// operation and its raw call (in turn first), so that both see the same
// machine at the same moment, and reports both p50s, the storage's p99
// and ratio-p50 (storage p50 / raw p50), which a drifting load on the
// machine does not skew.
func Paired(b *testing.B, pairs []Pair) {
	b.Helper()
	for _, p := range pairs {
		b.Run(p.Name, func(b *testing.B) {
			var ts, tr []time.Duration
			timed := func(op func() error) time.Duration {
				start := time.Now()
				if err := op(); err != nil {
					b.Fatal(err)
				}
				return time.Since(start)
			}
			flip := false
			for b.Loop() {
				if p.Setup != nil {
					if err := p.Setup(); err != nil {
						b.Fatal(err)
					}
				}
				if flip = !flip; flip {
					ts = append(ts, timed(p.Storage))
					tr = append(tr, timed(p.Raw))
				} else {
					tr = append(tr, timed(p.Raw))
					ts = append(ts, timed(p.Storage))
				}
			}
			slices.Sort(ts)
			slices.Sort(tr)
			b.ReportMetric(float64(ts[len(ts)/2].Nanoseconds()), "storage-p50-ns")
			b.ReportMetric(float64(ts[len(ts)*99/100].Nanoseconds()), "storage-p99-ns")
			b.ReportMetric(float64(tr[len(tr)/2].Nanoseconds()), "raw-p50-ns")
			b.ReportMetric(float64(ts[len(ts)/2])/float64(tr[len(tr)/2]), "ratio-p50")
		})
	}
}
