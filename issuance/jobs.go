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
)

// jobs are the loads and orders in progress, one per name.
type jobs struct {
	mu      sync.Mutex // protects running
	running map[string]*job
}

// job is one load-or-obtain of a name's certificate, shared by every
// handshake (and POST /acme) that needs it while it runs.
type job struct {
	done chan struct{} // closed when cert and err are set
	cert certmagic.Certificate
	err  error
}

// claim returns the job running for name (isNew false), or registers a
// new one (isNew true) that the caller runs and then ends with finish.
func (t *jobs) claim(name string) (j *job, isNew bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if j, ok := t.running[name]; ok {
		return j, false
	}
	j = &job{done: make(chan struct{})}
	t.running[name] = j
	return j, true
}

// finish ends name's job j, whose cert and err are set: it is removed and
// its waiters are woken.
func (t *jobs) finish(name string, j *job) {
	t.mu.Lock()
	delete(t.running, name)
	t.mu.Unlock()
	close(j.done)
}

// startJob returns the running job for name, or starts one. The job runs
// apart from the handshake that started it, so a client that gives up does
// not cancel an order: the next handshake gets the certificate.
func (r *Runtime) startJob(name string) *job {
	j, isNew := r.jobs.claim(name)
	if !isNew {
		return j
	}
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
		j.cert, j.err = r.loadOrObtain(name)
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
// orders it unless the name is in backoff. certmagic holds the storage lock
// IssueLockKey(name) for the whole order, so nodes sharing the storage
// never order the same name at once, and a node that waited for another's
// order finds the certificate in storage instead of ordering again.
//
// An order first waits for its turn in the node's queue (orderQueue), with
// no deadline but the runtime's life; IssueTimeout counts from when it
// leaves the queue. So a burst of new names is ordered at certmagic's pace
// without any of them running out of time (or into backoff) while queued.
func (r *Runtime) loadOrObtain(name string) (certmagic.Certificate, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.opts.IssueTimeout)
	cert, err := r.magic.CacheManagedCertificate(ctx, name)
	cancel()
	if err == nil {
		return cert, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return cert, fmt.Errorf("loading certificate for %s from storage: %w", name, err)
	}

	if !r.orderingElsewhere(name) {
		if err := r.queue.wait(r.ctx); err != nil {
			return cert, fmt.Errorf("obtaining certificate for %s: stopped while waiting for its turn: %w", name, err)
		}
	}
	ctx, cancel = context.WithTimeout(r.ctx, r.opts.IssueTimeout)
	defer cancel()
	if err := r.checkBackoff(ctx, name); err != nil {
		return cert, err
	}
	v, err := watch(ctx, name, func(ctx context.Context) error { return r.magic.ObtainCertSync(ctx, name) })
	if err != nil {
		if v.refused {
			r.setBackoff(name, err)
		}
		return cert, fmt.Errorf("obtaining certificate for %s: %w", name, err)
	}
	return r.magic.CacheManagedCertificate(ctx, name)
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

// NormalizeHost lowercases host and drops a trailing dot.
func NormalizeHost(host string) string {
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
