package caddyacme

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// obtainJobs are the loads and orders in progress, one per name.
type obtainJobs struct {
	mu      sync.Mutex // protects running
	running map[string]*obtainJob
}

// obtainJob is one load-or-obtain of a name's certificate, shared by every
// handshake that needs it while it runs.
type obtainJob struct {
	done chan struct{} // closed when cert and err are set
	cert certmagic.Certificate
	err  error
}

// certificate returns the certificate for the name a client asked for,
// from memory, else from storage, else by ordering it from the CA. A name
// the app does not allow gets an error, so that no other certificate source
// of the TLS policy is tried for it. The handshake waits up to issue_timeout.
func (a *App) certificate(ctx context.Context, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := serverName(hello)
	if err := a.allow(name); err != nil {
		return nil, err
	}
	if cert, ok := a.cached(name); ok {
		return &cert.Certificate, nil
	}

	job := a.startJob(name)
	timer := time.NewTimer(a.issueTimeout())
	defer timer.Stop()
	select {
	case <-job.done:
		if job.err != nil {
			var inBackoff backoffError
			if errors.As(job.err, &inBackoff) {
				a.backoffDenied(name, job.err)
			}
			return nil, job.err
		}
		return &job.cert.Certificate, nil
	case <-timer.C:
		return nil, a.orderQueue.notReady(name, a.issueTimeout())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// cached returns an unexpired certificate for name from the app's memory.
// An expired one is not returned, so that storage is read again: another
// node may have renewed it.
func (a *App) cached(name string) (certmagic.Certificate, bool) {
	for _, c := range a.cache.AllMatchingCertificates(name) {
		if !c.Expired() {
			return c, true
		}
	}
	return certmagic.Certificate{}, false
}

// startJob returns the running job for name, or starts one. The job runs
// apart from the handshake that started it, so a client that gives up does
// not cancel an order: the next handshake gets the certificate.
func (a *App) startJob(name string) *obtainJob {
	a.jobs.mu.Lock()
	defer a.jobs.mu.Unlock()
	if job, ok := a.jobs.running[name]; ok {
		return job
	}
	job := &obtainJob{done: make(chan struct{})}
	a.jobs.running[name] = job
	go func() {
		defer func() {
			if r := recover(); r != nil {
				job.err = fmt.Errorf("obtaining certificate for %s: panic: %v", name, r)
				a.logger.Error("panic obtaining certificate",
					zap.String("identifier", name),
					zap.Any("panic", r),
					zap.ByteString("stack", debug.Stack()))
			}
			a.jobs.mu.Lock()
			delete(a.jobs.running, name)
			a.jobs.mu.Unlock()
			close(job.done)
		}()
		job.cert, job.err = a.loadOrObtain(name)
	}()
	return job
}

// loadOrObtain loads name's certificate from storage into the cache, or
// orders it unless the name is in backoff. certmagic holds the storage lock
// issue_cert_<name> for the whole order, so nodes sharing the storage never
// order the same name at once, and a node that waited for another's order
// finds the certificate in storage instead of ordering again.
//
// An order first waits for its turn in the app's queue (orderQueue), with
// no deadline but the app's life; issue_timeout counts from when it leaves
// the queue. So a burst of new names is ordered at certmagic's pace without
// any of them running out of time (or into backoff) while queued.
func (a *App) loadOrObtain(name string) (certmagic.Certificate, error) {
	ctx, cancel := context.WithTimeout(a.ctx, a.issueTimeout())
	cert, err := a.magic.CacheManagedCertificate(ctx, name)
	cancel()
	if err == nil {
		return cert, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return cert, fmt.Errorf("loading certificate for %s from storage: %w", name, err)
	}

	if !a.orderingElsewhere(name) {
		if err := a.orderQueue.wait(a.ctx); err != nil {
			return cert, fmt.Errorf("obtaining certificate for %s: stopped while waiting for its turn: %w", name, err)
		}
	}
	ctx, cancel = context.WithTimeout(a.ctx, a.issueTimeout())
	defer cancel()
	if err := a.checkBackoff(ctx, name); err != nil {
		return cert, err
	}
	refused, err := a.watchCA(ctx, name, func(ctx context.Context) error { return a.magic.ObtainCertSync(ctx, name) })
	if err != nil {
		if refused {
			a.setBackoff(name, err)
		}
		return cert, fmt.Errorf("obtaining certificate for %s: %w", name, err)
	}
	return a.magic.CacheManagedCertificate(ctx, name)
}

// orderingElsewhere reports whether another node (or job) holds certmagic's
// issue lock of name, i.e. is ordering it: then this node does not take a
// turn in its queue, but waits for that lock and finds the certificate in
// storage. So a cluster whose nodes all see the handshakes of a burst
// still orders as many names at once as it has nodes. It takes the lock
// and gives it back at once to find out (storages without TryLock: false).
func (a *App) orderingElsewhere(name string) bool {
	tl, ok := a.storage.(certmagic.TryLocker)
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	key := issueLockKey(name)
	got, err := tl.TryLock(ctx, key)
	if err != nil {
		return false // the order will meet the error
	}
	if got {
		if err := a.storage.Unlock(ctx, key); err != nil {
			a.logger.Warn("releasing the issue lock taken to test it", zap.String("identifier", name), zap.Error(err))
		}
	}
	return !got
}

// issueLockKey is the name of the storage lock that certmagic holds while it
// orders name's certificate (certmagic's Config.lockKey of "issue_cert").
func issueLockKey(name string) string { return "issue_cert_" + name }

// orderQueue paces the app's new orders at certmagic's own limit for one
// account at one CA (RateLimitEvents per RateLimitEventsWindow: 10 per
// 10 s unless a program embedding Caddy changed them). certmagic's limiter
// waits inside the order, holding the issue lock and counting against the
// order's deadline; waiting here first leaves nothing for it to wait for.
type orderQueue struct {
	limiter *certmagic.RingBufferRateLimiter
	waiting atomic.Int64 // orders in wait
}

// newOrderQueue returns the app's order queue, or nil when certmagic's
// limit is off or invalid.
func newOrderQueue() *orderQueue {
	n, window := certmagic.RateLimitEvents, certmagic.RateLimitEventsWindow
	if n <= 0 || window <= 0 {
		return nil
	}
	return &orderQueue{limiter: certmagic.NewRateLimiter(n, window)}
}

// wait returns when it is an order's turn, or ctx's error.
func (q *orderQueue) wait(ctx context.Context) error {
	if q == nil {
		return nil
	}
	q.waiting.Add(1)
	defer q.waiting.Add(-1)
	return q.limiter.Wait(ctx)
}

// stop ends the queue's goroutine.
func (q *orderQueue) stop() {
	if q != nil {
		q.limiter.Stop()
	}
}

// notReady is the error of a handshake that gave up waiting for name's
// order after d, saying how many orders are queued.
func (q *orderQueue) notReady(name string, d time.Duration) error {
	if q != nil {
		if n := q.waiting.Load(); n > 0 {
			return fmt.Errorf("certificate for %s is not ready after %s (issue_timeout); it is still being obtained (new orders waiting for their turn: %d; at most %d per %s are placed)",
				name, d, n, q.limiter.MaxEvents(), q.limiter.Window())
		}
	}
	return fmt.Errorf("certificate for %s is not ready after %s (issue_timeout); it is still being obtained", name, d)
}

// backoff is what storage holds at backoffKey(name) after a failed order.
type backoff struct {
	Host  string    `json:"host"`
	Until time.Time `json:"until"`
	Error string    `json:"error"`
}

// checkBackoff returns an error if name is in backoff after a failed order,
// on this node or any other sharing the storage.
func (a *App) checkBackoff(ctx context.Context, name string) error {
	data, err := a.storage.Load(ctx, backoffKey(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading backoff of %s: %w", name, err)
	}
	var b backoff
	if err := json.Unmarshal(data, &b); err != nil {
		// written by someone else; an unreadable backoff must not block issuance forever
		a.logger.Warn("ignoring unreadable backoff record",
			zap.String("identifier", name),
			zap.String("key", backoffKey(name)),
			zap.Error(err))
		return nil
	}
	if left := time.Until(b.Until); left > 0 {
		return backoffError(fmt.Sprintf("please try again in %d seconds for host %s because of previous failure; this is configurable with fail_backoff_minutes",
			int(math.Ceil(left.Seconds())), name))
	}
	return nil
}

// backoffError is checkBackoff's answer for a name in backoff (as opposed
// to a storage error), with Kong's message.
type backoffError string

func (e backoffError) Error() string { return string(e) }

// watchCA runs obtain, an order or renewal of name, with ctx, and reports
// whether the CA refused it (certmagic's cert_failed event), as opposed to
// a failure before the order (the issue lock, storage), after it (saving
// the certificate), or because ctx ended (issue_timeout ran out, including
// in certmagic's own rate limiter, or the configuration was unloaded): only
// a refusal sets the backoff, so that a storage blip or a slow queue does
// not block a name for fail_backoff_minutes.
func (a *App) watchCA(ctx context.Context, name string, obtain func(context.Context) error) (refused bool, err error) {
	a.refusals.mu.Lock()
	a.refusals.watched[name] = false
	a.refusals.mu.Unlock()
	err = obtain(ctx)
	a.refusals.mu.Lock()
	refused = a.refusals.watched[name]
	delete(a.refusals.watched, name)
	a.refusals.mu.Unlock()
	return refused && ctx.Err() == nil, err
}

// caRefusals are the names of orders in progress (watchCA), set to true
// when the CA refuses one.
type caRefusals struct {
	mu      sync.Mutex // protects watched
	watched map[string]bool
}

// noteRefusal records the CA's refusal of an order for name being watched.
func (a *App) noteRefusal(name string) {
	a.refusals.mu.Lock()
	if _, ok := a.refusals.watched[name]; ok {
		a.refusals.watched[name] = true
	}
	a.refusals.mu.Unlock()
}

// setBackoff records a failed order of name, so that no node orders it
// again before fail_backoff_minutes have passed.
func (a *App) setBackoff(name string, cause error) {
	d := a.failBackoff()
	if d <= 0 {
		return
	}
	data, err := json.Marshal(backoff{Host: name, Until: time.Now().Add(d).UTC(), Error: cause.Error()})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), 30*time.Second)
		defer cancel()
		err = a.storage.Store(ctx, backoffKey(name), data)
	}
	if err != nil {
		a.logger.Error("recording backoff after failed order",
			zap.String("identifier", name),
			zap.Error(err))
		return
	}
	a.logger.Warn("certificate order failed; backing off",
		zap.String("identifier", name),
		zap.Duration("backoff", d),
		zap.Error(cause))
}

// backoffKey is the storage key of name's backoff record.
func backoffKey(name string) string {
	return "caddy-acme/fail_backoff/" + certmagic.StorageKeys.Safe(name)
}

// serverName is the normalised name of a ClientHello: its SNI, lowercased
// and without a trailing dot, or the IP address the client connected to
// when it sent no SNI (as certmagic does).
func serverName(hello *tls.ClientHelloInfo) string {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name == "" && hello.Conn != nil {
		if host, _, err := net.SplitHostPort(hello.Conn.LocalAddr().String()); err == nil {
			name = host
		}
	}
	return name
}
