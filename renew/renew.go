// Package renew decides when caddy-acme's certificates are renewed and runs
// the cluster-wide renewal scan, on Kong's terms: a certificate is due when
// fewer than renew_threshold_days remain before it expires. Unlike Kong the
// threshold is capped at half the certificate's lifetime (so short-lived
// certificates are not renewed continuously), the CA's ARI window may make it
// due earlier, every certificate in storage is scanned (also those no
// handshake asked for since the process started), and one node of a cluster
// scans at a time.
//
// The package has no Caddy import: the app gives it a Store and a Clock.
package renew

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"runtime/debug"
	"sort"
	"sync"
	"time"
)

// Cert is what a renewal decision needs to know about one certificate.
type Cert struct {
	Name      string
	NotBefore time.Time
	NotAfter  time.Time
	Serial    *big.Int // identifies the version, for caches to compare

	// The CA's suggested renewal window (ARI, RFC 9773), if it gave one.
	ARIStart time.Time
	ARIEnd   time.Time
}

// Policy is when certificates are renewed.
type Policy struct {
	// Renew when less than this remains before expiry (Kong's
	// renew_threshold_days), capped at half the certificate's lifetime.
	Threshold time.Duration
}

// RenewAt returns when c becomes due: Threshold (at most half the
// lifetime) before it expires, or the start of the CA's ARI window if that
// is earlier.
func (p Policy) RenewAt(c Cert) time.Time {
	threshold := p.Threshold
	if lifetime := c.NotAfter.Sub(c.NotBefore); lifetime > 0 && threshold > lifetime/2 {
		threshold = lifetime / 2
	}
	at := c.NotAfter.Add(-threshold)
	if !c.ARIStart.IsZero() && c.ARIStart.Before(at) && !c.ARIEnd.Before(c.ARIStart) {
		at = c.ARIStart
	}
	return at
}

// Due reports whether c must be renewed at now.
func (p Policy) Due(c Cert, now time.Time) bool {
	return !now.Before(p.RenewAt(c))
}

// Store is what the scanner needs from the app and its storage.
type Store interface {
	// Names lists every certificate the app manages in storage.
	Names(ctx context.Context) ([]string, error)
	// Cert loads one certificate's renewal facts.
	Cert(ctx context.Context, name string) (Cert, error)
	// Renew renews name's certificate now, storing it and replacing it in
	// the node's cache.
	Renew(ctx context.Context, name string) error
	// TryLock takes the cluster-wide scan lock without waiting.
	TryLock(ctx context.Context, name string) (bool, error)
	// Unlock releases it.
	Unlock(ctx context.Context, name string) error
	// SaveStatus records the last scan's status where every node reads it.
	SaveStatus(ctx context.Context, s Status) error
}

// BatchStore is a Store that reads many certificates at once (a storage
// round trip per batch instead of per certificate). certs[i] and errs[i]
// are names[i]'s.
type BatchStore interface {
	Store
	Certs(ctx context.Context, names []string) (certs []Cert, errs []error)
}

// Clock tells the time; tests give a fake one.
type Clock interface {
	Now() time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Status is the result of one scan.
type Status struct {
	Node    string                `json:"node,omitempty"`
	Start   time.Time             `json:"start"`
	End     time.Time             `json:"end"`
	Checked int                   `json:"checked"`
	Due     int                   `json:"due"`
	Renewed int                   `json:"renewed"`
	Failed  int                   `json:"failed"`
	Hosts   map[string]HostStatus `json:"hosts,omitempty"`
}

// HostStatus is one certificate's outcome in a scan.
type HostStatus struct {
	NotAfter  time.Time `json:"not_after"`
	RenewAt   time.Time `json:"renew_at"`
	Renewed   bool      `json:"renewed,omitempty"`
	LastError string    `json:"last_error,omitempty"`
}

// ScanLock is the name of the cluster-wide scan lock.
const ScanLock = "caddy_acme_renew_scan"

// ErrBusy is returned by Scan when another node (or this one) is scanning.
var ErrBusy = errors.New("a renewal scan is already running in the cluster")

// Scanner runs renewal scans.
type Scanner struct {
	Store       Store
	Policy      Policy
	Clock       Clock
	Node        string
	Concurrency int // renewals at once; default 4
	BatchSize   int // certificates read at once from a BatchStore; default 256
	// BatchesInFlight is how many batches are read at once: the next
	// while the previous one is parsed and checked, so that the storage
	// and this process's CPU work at the same time. Default 2; 1 reads one
	// batch at a time (a storage whose batch is already many reads in
	// parallel gains nothing from more).
	BatchesInFlight int
}

// Scan checks every certificate in storage and renews those due, at most
// Concurrency at a time. One certificate's failure never stops the others:
// it is recorded in the status and retried at the next scan. It returns
// ErrBusy without doing anything when the scan lock is held elsewhere.
func (s *Scanner) Scan(ctx context.Context) (Status, error) {
	ok, err := s.Store.TryLock(ctx, ScanLock)
	if err != nil {
		return Status{}, fmt.Errorf("taking the scan lock: %w", err)
	}
	if !ok {
		return Status{}, ErrBusy
	}
	defer s.Store.Unlock(context.WithoutCancel(ctx), ScanLock) //nolint:errcheck // the lease expires anyway

	st := Status{Node: s.Node, Start: s.Clock.Now(), Hosts: make(map[string]HostStatus)}
	names, err := s.Store.Names(ctx)
	if err != nil {
		return st, fmt.Errorf("listing certificates: %w", err)
	}
	sort.Strings(names)

	workers := s.Concurrency
	if workers <= 0 {
		workers = 4
	}
	batch := s.BatchSize
	if batch <= 0 {
		batch = 256
	}
	inFlight := s.BatchesInFlight
	if inFlight <= 0 {
		inFlight = 2
	}
	var mu sync.Mutex // protects st
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for b := range s.batches(ctx, names, batch, inFlight) {
		l := <-b
		for i, name := range l.names {
			if ctx.Err() != nil {
				break
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				hs, due, renewed := s.check(ctx, l.certs[i], l.errs[i])
				mu.Lock()
				defer mu.Unlock()
				st.Checked++
				if due {
					st.Due++
				}
				if renewed {
					st.Renewed++
				} else if hs.LastError != "" {
					st.Failed++
				}
				st.Hosts[name] = hs
			})
		}
	}
	wg.Wait()
	st.End = s.Clock.Now()
	if err := s.Store.SaveStatus(context.WithoutCancel(ctx), st); err != nil {
		return st, fmt.Errorf("saving scan status: %w", err)
	}
	return st, ctx.Err()
}

// batchRead is the renewal facts of names read by load.
type batchRead struct {
	names []string
	certs []Cert
	errs  []error
}

// batches reads names in batches of size, inFlight at once: it yields, in
// names' order, a channel that gets each batch once read. It stops
// starting reads once ctx ends; the reads started finish.
func (s *Scanner) batches(ctx context.Context, names []string, size, inFlight int) <-chan chan batchRead {
	out := make(chan chan batchRead, inFlight-1)
	go func() {
		defer close(out)
		for len(names) > 0 && ctx.Err() == nil {
			part := names[:min(size, len(names))]
			names = names[len(part):]
			c := make(chan batchRead, 1)
			out <- c // waits while inFlight reads are not taken
			go func() {
				certs, errs := s.load(ctx, part)
				c <- batchRead{part, certs, errs}
			}()
		}
	}()
	return out
}

// load reads the renewal facts of names: in one call to a BatchStore (a
// panic there is every name's error), else one Cert call each.
func (s *Scanner) load(ctx context.Context, names []string) (certs []Cert, errs []error) {
	defer func() {
		if r := recover(); r != nil {
			certs, errs = make([]Cert, len(names)), make([]error, len(names))
			for i := range errs {
				errs[i] = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}
	}()
	if bs, ok := s.Store.(BatchStore); ok {
		certs, errs = bs.Certs(ctx, names)
		if len(certs) != len(names) || len(errs) != len(names) {
			panic(fmt.Sprintf("Certs returned %d certificates and %d errors for %d names", len(certs), len(errs), len(names)))
		}
		for i := range certs {
			certs[i].Name = names[i]
		}
		return certs, errs
	}
	certs, errs = make([]Cert, len(names)), make([]error, len(names))
	for i, name := range names {
		certs[i], errs[i] = s.loadOne(ctx, name)
	}
	return certs, errs
}

// loadOne reads one certificate's facts; a panic is turned into its error.
func (s *Scanner) loadOne(ctx context.Context, name string) (c Cert, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, err = Cert{Name: name}, fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	c, err = s.Store.Cert(ctx, name)
	c.Name = name
	return c, err
}

// check decides about one certificate (read with error loadErr) and
// renews it if due; a panic is turned into that certificate's error.
func (s *Scanner) check(ctx context.Context, c Cert, loadErr error) (hs HostStatus, due, renewed bool) {
	defer func() {
		if r := recover(); r != nil {
			hs.LastError = fmt.Sprintf("panic: %v\n%s", r, debug.Stack())
			renewed = false
		}
	}()
	if loadErr != nil {
		hs.LastError = fmt.Sprintf("loading certificate: %v", loadErr)
		return hs, false, false
	}
	hs.NotAfter, hs.RenewAt = c.NotAfter, s.Policy.RenewAt(c)
	if due = s.Policy.Due(c, s.Clock.Now()); !due {
		return hs, false, false
	}
	if err := s.Store.Renew(ctx, c.Name); err != nil {
		hs.LastError = err.Error()
		return hs, true, false
	}
	hs.Renewed = true
	return hs, true, true
}
