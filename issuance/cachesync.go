package issuance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Nodes sharing a storage keep their certificates in memory, so a
// certificate renewed or deleted by one node must reach the others'
// caches. The node that changes a certificate appends the change to a short
// log in storage (CacheChangesKey); every node reads that log every
// CacheSyncInterval (one storage read) and reloads or drops the
// certificates it holds for the names listed. A node that fell behind the
// log's window refreshes every certificate it holds from storage instead.

// cacheChange is one certificate changed in storage.
type cacheChange struct {
	Seq     int64     `json:"seq"`
	Host    string    `json:"host"`
	Deleted bool      `json:"deleted,omitempty"`
	At      time.Time `json:"at"`
}

// cacheChanges is the log at CacheChangesKey. Sequence numbers are
// nanosecond timestamps made strictly increasing, so that they still
// increase if the log is lost or rewritten.
type cacheChanges struct {
	Seq     int64         `json:"seq"`     // the last change's
	Trimmed int64         `json:"trimmed"` // the highest seq dropped from Changes
	Changes []cacheChange `json:"changes"` // oldest first
}

// changeLog is one node's side of the log: where it is in the log, the
// names it holds, and the renewals waiting to be published.
type changeLog struct {
	r *Runtime

	mu     sync.Mutex          // protects seen, primed, cached
	seen   int64               // last seq applied
	primed bool                // seen was read from storage
	cached map[string]struct{} // names put into the cache by this node

	pendingMu sync.Mutex // protects pending
	pending   map[string]struct{}
	wake      chan struct{} // a name was added to pending
}

// maxPendingPublications bounds the renewals waiting to be published; past
// it a renewal reaches the other nodes at their next renewal scan (which
// compares everything they hold with storage).
const maxPendingPublications = 10000

func newChangeLog(r *Runtime) *changeLog {
	return &changeLog{
		r:       r,
		cached:  make(map[string]struct{}),
		pending: make(map[string]struct{}),
		wake:    make(chan struct{}, 1),
	}
}

// noteCached records that name's certificate is in this node's memory
// (certmagic's cached_managed_cert event).
func (l *changeLog) noteCached(name string) {
	l.mu.Lock()
	l.cached[name] = struct{}{}
	l.mu.Unlock()
}

// cachedNames lists the names this node put in its cache that are still
// there, forgetting the others.
func (l *changeLog) cachedNames() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	names := make([]string, 0, len(l.cached))
	for name := range l.cached {
		if len(l.r.cachedFor(name)) == 0 {
			delete(l.cached, name)
			continue
		}
		names = append(names, name)
	}
	return names
}

// cachedFor returns the certificates in memory that carry name exactly.
func (r *Runtime) cachedFor(name string) []certmagic.Certificate {
	var out []certmagic.Certificate
	for _, c := range r.cache.AllMatchingCertificates(name) {
		if slices.Contains(c.Names, name) {
			out = append(out, c)
		}
	}
	return out
}

// evict drops name's certificates from this node's memory.
func (r *Runtime) evict(name string) {
	cached := r.cachedFor(name)
	hashes := make([]string, 0, len(cached))
	for _, c := range cached {
		hashes = append(hashes, c.Hash())
	}
	r.cache.Remove(hashes)
}

// publishLater publishes a renewal of name from outside certmagic's event
// callback, where it was seen: publishing takes a storage lock, and
// certmagic holds the issue lock while it calls back.
func (l *changeLog) publishLater(name string) {
	l.pendingMu.Lock()
	if len(l.pending) < maxPendingPublications {
		l.pending[name] = struct{}{}
	} else {
		l.r.logger.Warn("too many renewals waiting to be told to other nodes; they pick this one up at their next renewal scan",
			zap.String("identifier", name))
	}
	l.pendingMu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// publishPending publishes the renewals publishLater collected.
func (l *changeLog) publishPending(ctx context.Context) {
	l.pendingMu.Lock()
	names := make([]string, 0, len(l.pending))
	for name := range l.pending {
		names = append(names, name)
	}
	clear(l.pending)
	l.pendingMu.Unlock()
	for _, name := range names {
		l.publish(ctx, name, false)
	}
}

// publish appends a change of host's certificate to the log, so that the
// other nodes reload (or, if deleted, drop) it. It is best effort: a node
// that misses the change still reloads a renewed certificate at its next
// scan and a certificate on expiry.
func (l *changeLog) publish(ctx context.Context, host string, deleted bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := l.append(ctx, host, deleted); err != nil {
		l.r.logger.Error("telling other nodes about a certificate change; they pick it up at their next renewal scan",
			zap.String("identifier", host),
			zap.Bool("deleted", deleted),
			zap.Error(err))
	}
}

func (l *changeLog) append(ctx context.Context, host string, deleted bool) error {
	s := l.r.storage
	if err := s.Lock(ctx, cacheChangesLock); err != nil {
		return fmt.Errorf("locking %s: %w", cacheChangesLock, err)
	}
	defer s.Unlock(context.WithoutCancel(ctx), cacheChangesLock) //nolint:errcheck // the lease expires anyway

	log, err := l.load(ctx)
	if err != nil {
		// unreadable (written by someone else): start a new log whose
		// sequence numbers are still above the old ones, and make every
		// node refresh everything, since changes may have been lost
		l.r.logger.Warn("replacing an unreadable certificate change log", zap.String("key", CacheChangesKey), zap.Error(err))
		log = cacheChanges{}
	}
	seq := max(time.Now().UnixNano(), log.Seq+1)
	if err != nil {
		log.Trimmed = seq - 1
	}
	log.Seq = seq
	log.Changes = append(log.Changes, cacheChange{Seq: seq, Host: host, Deleted: deleted, At: time.Now().UTC()})
	if over := len(log.Changes) - l.r.opts.MaxCacheChanges; over > 0 {
		log.Trimmed = log.Changes[over-1].Seq
		log.Changes = slices.Delete(log.Changes, 0, over)
	}
	data, err := json.Marshal(log)
	if err != nil {
		return err
	}
	return s.Store(ctx, CacheChangesKey, data)
}

// load reads the log; a missing log is an empty one.
func (l *changeLog) load(ctx context.Context) (cacheChanges, error) {
	var log cacheChanges
	data, err := l.r.storage.Load(ctx, CacheChangesKey)
	if errors.Is(err, fs.ErrNotExist) {
		return log, nil
	}
	if err != nil {
		return log, err
	}
	if err := json.Unmarshal(data, &log); err != nil {
		return log, fmt.Errorf("%s: %w", CacheChangesKey, err)
	}
	return log, nil
}

// sync applies the changes logged since the last call to this node's
// memory. The first call only notes where the log is: a node's cache
// starts empty, so nothing in it predates the log. It returns how many
// names were reloaded or dropped.
func (l *changeLog) sync(ctx context.Context) (int, error) {
	log, err := l.load(ctx)
	if err != nil {
		return 0, err
	}
	l.mu.Lock()
	seen, primed := l.seen, l.primed
	l.seen, l.primed = max(seen, log.Seq), true
	l.mu.Unlock()
	if !primed || log.Seq <= seen {
		return 0, nil
	}
	if seen < log.Trimmed {
		// missed changes that are no longer in the log
		return l.r.refreshCached(ctx)
	}
	done := make(map[string]bool)
	changed := 0
	for _, c := range log.Changes {
		if c.Seq <= seen || done[c.Host] {
			continue
		}
		done[c.Host] = true
		if n, err := l.r.refreshName(ctx, c.Host); err != nil {
			l.r.logger.Warn("applying a certificate change from another node", zap.String("identifier", c.Host), zap.Error(err))
		} else {
			changed += n
		}
	}
	return changed, nil
}

// refreshCached compares every certificate this node holds with storage,
// reloading those that changed and dropping those deleted.
func (r *Runtime) refreshCached(ctx context.Context) (int, error) {
	changed := 0
	for _, name := range r.changes.cachedNames() {
		if ctx.Err() != nil {
			return changed, ctx.Err()
		}
		n, err := r.refreshName(ctx, name)
		if err != nil {
			r.logger.Warn("refreshing a certificate from storage", zap.String("identifier", name), zap.Error(err))
			continue
		}
		changed += n
	}
	return changed, nil
}

// refreshName makes this node's memory of name's certificate match
// storage: nothing to do if it holds none or the stored one; the stored one
// loaded in place of another; dropped when storage has none. It returns 1
// when it changed something.
func (r *Runtime) refreshName(ctx context.Context, name string) (int, error) {
	cached := r.cachedFor(name)
	if len(cached) == 0 {
		return 0, nil // not in memory: a handshake loads the stored one
	}
	stored, err := r.loadStored(ctx, name)
	if errors.Is(err, fs.ErrNotExist) {
		r.evict(name)
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	if slices.ContainsFunc(cached, func(c certmagic.Certificate) bool {
		return c.Leaf != nil && c.Leaf.NotAfter.Equal(stored.NotAfter) && c.Leaf.SerialNumber.Cmp(stored.SerialNumber) == 0
	}) {
		return 0, nil
	}
	if err := r.replaceCached(ctx, name); err != nil {
		return 0, err
	}
	return 1, nil
}

// replaceCached loads name's stored certificate into this node's cache in
// place of the certificates it holds for name.
func (r *Runtime) replaceCached(ctx context.Context, name string) error {
	var old []string
	for _, c := range r.cachedFor(name) {
		old = append(old, c.Hash())
	}
	fresh, err := r.cacheManaged(ctx, name)
	if err != nil {
		return fmt.Errorf("loading the renewed certificate: %w", err)
	}
	old = slices.DeleteFunc(old, func(h string) bool { return h == fresh.Hash() })
	r.cache.Remove(old)
	return nil
}

// start applies the other nodes' changes every CacheSyncInterval, and
// publishes certmagic's own renewals, until the runtime's context ends.
func (l *changeLog) start() {
	logger := l.r.logger.Named("cache_sync")
	ctx := l.r.ctx
	goRecover(logger, "panic applying certificate changes; they reach this node at its renewal scans until the next config load", func() {
		ticker := time.NewTicker(l.r.opts.CacheSyncInterval)
		defer ticker.Stop()
		for {
			n, err := l.sync(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				logger.Warn("reading certificate changes from storage", zap.Error(err))
			case n > 0:
				logger.Info("applied certificate changes made by other nodes", zap.Int("count", n))
			}
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
				l.r.refreshDomains(ctx)
			}
		}
	})
	goRecover(logger, "panic telling other nodes about renewals; they pick them up at their renewal scans until the next config load", func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-l.wake:
				l.publishPending(ctx)
			}
		}
	})
}
