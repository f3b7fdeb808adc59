package issuance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/allowlist"
)

// jobs are the loads and orders in progress, one per name.
type jobs struct {
	mu      sync.Mutex // protects running and the jobs' waiters, pinned, atCA, dropped, cancelWait
	running map[string]*job
}

// job is one load-or-obtain of a name's certificate, shared by every
// handshake (and POST /acme) that needs it while it runs.
type job struct {
	done chan struct{} // closed when cert and err are set
	cert certmagic.Certificate
	err  error

	ask        bool               // Allow refused the name as not listed: Options.Ask decides
	waiters    int                // handshakes waiting for it
	pinned     bool               // POST /acme: never dropped
	atCA       bool               // out of the queue: never dropped
	dropped    bool               // every handshake gave up while it was queued
	cancelWait context.CancelFunc // ends its wait in the queue
}

// claim returns the job running for name (isNew false), or registers a
// new one (isNew true) that the caller runs and then ends with finish. A
// handshake counts itself in as a waiter and must call leave; a new job
// claimed by anything else (POST /acme) is pinned: never dropped.
func (t *jobs) claim(name string, handshake bool) (j *job, isNew bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	j, ok := t.running[name]
	if !ok {
		j = &job{done: make(chan struct{}), pinned: !handshake}
		t.running[name] = j
	}
	if handshake {
		j.waiters++
	}
	return j, !ok
}

// leave counts a handshake out of j. When the last one leaves a job still
// waiting for its turn (not POST /acme's), the job is dropped: it leaves
// the queue without an order, and the next handshake for the name starts
// a new one.
func (t *jobs) leave(name string, j *job) {
	t.mu.Lock()
	defer t.mu.Unlock()
	j.waiters--
	if j.waiters > 0 || j.pinned || j.atCA || j.dropped || j.cancelWait == nil {
		return
	}
	j.dropped = true
	j.cancelWait()
	if t.running[name] == j {
		delete(t.running, name)
	}
}

// waiting registers cancel as the end of j's wait in the queue, or
// reports false if j was dropped already.
func (t *jobs) waiting(j *job, cancel context.CancelFunc) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if j.dropped || (j.waiters == 0 && !j.pinned) {
		j.dropped = true
		return false
	}
	j.cancelWait = cancel
	return true
}

// leaveQueue marks j out of the queue (at the CA, never dropped), or
// reports false if it was dropped meanwhile.
func (t *jobs) leaveQueue(j *job) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	j.cancelWait = nil
	if j.dropped {
		return false
	}
	j.atCA = true
	return true
}

// finish ends name's job j, whose cert and err are set: it is removed and
// its waiters are woken.
func (t *jobs) finish(name string, j *job) {
	t.mu.Lock()
	if t.running[name] == j {
		delete(t.running, name)
	}
	t.mu.Unlock()
	close(j.done)
}

// startJob returns the running job for name, or starts one, counting the
// calling handshake in (it must call r.jobs.leave). The job runs apart
// from the handshake that started it, so a client that gives up does not
// cancel an order that reached the CA: the next handshake gets the
// certificate. ask: Allow refused name as not listed, Options.Ask decides
// before an order.
func (r *Runtime) startJob(name string, ask bool) *job {
	j, isNew := r.jobs.claim(name, true)
	if !isNew {
		return j
	}
	j.ask = ask
	go func() {
		defer r.jobs.finish(name, j)
		defer func() {
			if p := recover(); p != nil {
				j.err = fmt.Errorf("obtaining certificate for %s: panic: %v", name, p)
				r.logger.Error("panic obtaining certificate",
					zap.String("identifier", name),
					zap.Any("panic", p),
					zap.ByteString("stack", debug.Stack()))
			}
		}()
		j.cert, j.err = r.loadOrObtain(j, name)
	}()
	return j
}

// cached returns an unexpired certificate for name from memory. An expired
// one is not returned, so that storage is read again: another node may
// have renewed it.
func (r *Runtime) cached(name string) (certmagic.Certificate, bool) {
	for _, c := range r.cache.AllMatchingCertificates(name) {
		if !c.Expired() {
			return c, true
		}
	}
	return certmagic.Certificate{}, false
}

// loadOrObtain loads name's certificate from storage into the cache, or
// orders it. certmagic holds the storage lock IssueLockKey(name) for the
// whole order, so nodes sharing the storage never order the same name at
// once, and a node that waited for another's order finds the certificate
// in storage instead of ordering again.
//
// Before an order, the checks that cost nothing come first (mayOrder: the
// public-CA rule, the CA pause, the budget's memory, the backoff, the
// permission module), so that a flood is refused at once;
// then the order waits for its turn in the node's queue (orderQueue),
// bounded by the intake, with no deadline but the runtime's life and its
// handshakes' patience: when every handshake waiting for it has given up,
// it is dropped. IssueTimeout counts from when it leaves the queue, so a
// burst of new names is ordered at certmagic's pace without any of them
// running out of time while queued.
func (r *Runtime) loadOrObtain(j *job, name string) (certmagic.Certificate, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.opts.IssueTimeout)
	cert, err := r.cacheManaged(ctx, name)
	if err == nil {
		cancel()
		return cert, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		cancel()
		return cert, fmt.Errorf("loading certificate for %s from storage: %w", name, err)
	}
	err = r.mayOrder(ctx, j, name)
	cancel()
	if err != nil {
		return cert, err
	}

	// counted in before the issue lock is probed, so that a name past the
	// bound costs nothing more (a probe may cost a goroutine for a while:
	// certmagic's file storage keeps a lock file fresh for 5 s)
	domain := RegisteredDomain(name)
	if err := r.intake.enter(domain, j.pinned); err != nil {
		return cert, fmt.Errorf("obtaining certificate for %s: %w", name, err)
	}
	err = nil
	if !r.orderingElsewhere(name) {
		waitCtx, stopWait := context.WithCancel(r.ctx)
		err = errDropped
		if r.jobs.waiting(j, stopWait) {
			err = r.queue.wait(waitCtx)
		}
		stopWait()
	}
	r.intake.leave(domain)
	if !r.jobs.leaveQueue(j) {
		err = errDropped
	}
	if err != nil {
		if errors.Is(err, errDropped) {
			metrics.dropped.Inc()
		}
		return cert, fmt.Errorf("obtaining certificate for %s: %w", name, err)
	}

	ctx, cancel = context.WithTimeout(r.ctx, r.opts.IssueTimeout)
	defer cancel()
	usable, err := r.usableCAs(ctx, name, true)
	if err != nil {
		return cert, err
	}
	if usable, err = r.prepareOrder(ctx, usable); err != nil {
		return cert, fmt.Errorf("obtaining certificate for %s: %w", name, err)
	}
	if err := r.check.check(ctx, r.storage); err != nil {
		return cert, fmt.Errorf("obtaining certificate for %s: %w", name, err)
	}
	release, err := r.budget.reserve(ctx, name)
	if err != nil {
		if _, ok := errors.AsType[BudgetError](err); ok {
			r.budgetDenied(name, err)
		}
		return cert, fmt.Errorf("obtaining certificate for %s: %w", name, err)
	}
	magic := r.magicFor(usable)
	v, err := watch(ctx, name, func(ctx context.Context) error { return magic.ObtainCertSync(ctx, name) })
	release(err == nil)
	r.afterOrder(name, v, err, true)
	if err != nil {
		return cert, fmt.Errorf("obtaining certificate for %s: %w", name, err)
	}
	return r.cacheManaged(ctx, name)
}

// prepareOrder runs Options.PrepareOrder (the primary CA's account setup)
// before an order that may go to the primary CA. Its failure fails the
// order, unless a fallback CA is usable: then the order goes to the
// fallback CAs only.
func (r *Runtime) prepareOrder(ctx context.Context, usable []*caState) ([]*caState, error) {
	if r.opts.PrepareOrder == nil || usable[0] != r.cas[0] {
		return usable, nil
	}
	err := r.opts.PrepareOrder(ctx)
	if err == nil {
		return usable, nil
	}
	if len(usable) == 1 {
		return nil, err
	}
	r.logger.Warn("the primary CA's account cannot be set up; ordering from the fallback CAs", zap.Error(err))
	return usable[1:], nil
}

// errDropped is the error of an order dropped from the queue because every
// handshake waiting for it gave up.
var errDropped = errors.New("dropped from the queue before reaching the CA: every handshake waiting for it gave up")

// mayOrder returns why name may not be ordered now, with no storage write
// and no order: Options.Orderable, the CAs' pauses and backoffs (no CA
// usable for it), the budget (in memory), and, for a name Allow refused as
// not listed, Options.Ask.
func (r *Runtime) mayOrder(ctx context.Context, j *job, name string) error {
	if r.opts.Orderable != nil {
		if err := r.opts.Orderable(name); err != nil {
			return err
		}
	}
	if _, err := r.usableCAs(ctx, name, false); err != nil {
		return err
	}
	if err := r.budget.check(name); err != nil {
		r.budgetDenied(name, err)
		return err
	}
	if j.ask {
		if err := r.asks.ask(ctx, name, r.opts.Ask); err != nil {
			return err
		}
	}
	return nil
}

// orderingElsewhere reports whether another node (or job) holds certmagic's
// issue lock of name, i.e. is ordering it: then this node does not take a
// turn in its queue, but waits for that lock and finds the certificate in
// storage. So a cluster whose nodes all see the handshakes of a burst
// still orders as many names at once as it has nodes. It takes the lock
// and gives it back at once to find out (storages without TryLock: false).
func (r *Runtime) orderingElsewhere(name string) bool {
	tl, ok := r.storage.(certmagic.TryLocker)
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	defer cancel()
	key := IssueLockKey(name)
	got, err := tl.TryLock(ctx, key)
	if err != nil {
		return false // the order will meet the error
	}
	if got {
		if err := r.storage.Unlock(ctx, key); err != nil {
			r.logger.Warn("releasing the issue lock taken to test it", zap.String("identifier", name), zap.Error(err))
		}
	}
	return !got
}

// ServerName is the normalised name of a ClientHello: its SNI, lowercased
// and without a trailing dot, or the IP address the client connected to
// when it sent no SNI (as certmagic does).
func ServerName(hello *tls.ClientHelloInfo) string {
	name := NormalizeHost(hello.ServerName)
	if name == "" && hello.Conn != nil {
		if host, _, err := net.SplitHostPort(hello.Conn.LocalAddr().String()); err == nil {
			name = host
		}
	}
	return name
}

// NormalizeHost lowercases host and drops a trailing dot; an IPv6
// address (also in brackets) is written as the domains entries are
// (allowlist.NormalizeIP), so that it has one storage key.
func NormalizeHost(host string) string {
	if strings.IndexByte(host, ':') >= 0 {
		if ip, ok := allowlist.NormalizeIP(host); ok {
			return ip
		}
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
