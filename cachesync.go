package caddyacme

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Nodes sharing a storage keep their certificates in memory, so a
// certificate renewed or deleted by one node must reach the others'
// caches. The node that changes a certificate appends the change to a short
// log in storage; every node reads that log every cache_sync_interval (one
// storage read) and reloads or drops the certificates it holds for the
// names listed. A node that fell behind the log's window refreshes every
// certificate it holds from storage instead.

// cacheChangesKey is the storage key of the log of certificate changes.
const cacheChangesKey = "caddy-acme/cache_changes.json"

// cacheChangesLock serialises appends to the log across nodes.
const cacheChangesLock = "caddy_acme_cache_changes"

// maxCacheChanges is how many changes the log keeps; a node that missed
// more than that refreshes everything it holds. A variable for tests.
var maxCacheChanges = 1000

// cacheChange is one certificate changed in storage.
type cacheChange struct {
	Seq     int64     `json:"seq"`
	Host    string    `json:"host"`
	Deleted bool      `json:"deleted,omitempty"`
	At      time.Time `json:"at"`
}

// cacheChanges is the log at cacheChangesKey. Sequence numbers are
// nanosecond timestamps made strictly increasing, so that they still
// increase if the log is lost or rewritten.
type cacheChanges struct {
	Seq     int64         `json:"seq"`     // the last change's
	Trimmed int64         `json:"trimmed"` // the highest seq dropped from Changes
	Changes []cacheChange `json:"changes"` // oldest first
}

// cacheSync is one node's view of the log and the names it holds.
type cacheSync struct {
	mu     sync.Mutex          // protects seen, cached, primed
	seen   int64               // last seq applied
	primed bool                // seen was read from storage
	cached map[string]struct{} // names put into the cache by this node
}

// noteCached records that name's certificate is in this node's memory; it
// is called for certmagic's cached_managed_cert event (events.go).
func (a *App) noteCached(name string) {
	a.cacheSync.mu.Lock()
	a.cacheSync.cached[name] = struct{}{}
	a.cacheSync.mu.Unlock()
}

// cachedNames lists the names this node put in its cache that are still
// there, forgetting the others.
func (a *App) cachedNames() []string {
	a.cacheSync.mu.Lock()
	defer a.cacheSync.mu.Unlock()
	names := make([]string, 0, len(a.cacheSync.cached))
	for name := range a.cacheSync.cached {
		if len(a.cachedFor(name)) == 0 {
			delete(a.cacheSync.cached, name)
			continue
		}
		names = append(names, name)
	}
	return names
}

// cachedFor returns the certificates in memory that carry name exactly.
func (a *App) cachedFor(name string) []certmagic.Certificate {
	var out []certmagic.Certificate
	for _, c := range a.cache.AllMatchingCertificates(name) {
		if slices.Contains(c.Names, name) {
			out = append(out, c)
		}
	}
	return out
}

// evict drops name's certificates from this node's memory.
func (a *App) evict(name string) {
	var hashes []string
	for _, c := range a.cachedFor(name) {
		hashes = append(hashes, c.Hash())
	}
	a.cache.Remove(hashes)
}

// publishChange appends a change of host's certificate to the log, so that
// the other nodes reload (or, if deleted, drop) it. It is best effort: a
// node that misses the change still reloads a renewed certificate at its
// next scan and a certificate on expiry.
func (a *App) publishChange(ctx context.Context, host string, deleted bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := a.appendChange(ctx, host, deleted); err != nil {
		a.logger.Error("telling other nodes about a certificate change; they pick it up at their next renewal scan",
			zap.String("identifier", host),
			zap.Bool("deleted", deleted),
			zap.Error(err))
	}
}

func (a *App) appendChange(ctx context.Context, host string, deleted bool) error {
	if err := a.storage.Lock(ctx, cacheChangesLock); err != nil {
		return fmt.Errorf("locking %s: %w", cacheChangesLock, err)
	}
	defer a.storage.Unlock(context.WithoutCancel(ctx), cacheChangesLock) //nolint:errcheck // the lease expires anyway

	log, err := a.loadChanges(ctx)
	if err != nil {
		// unreadable (written by someone else): start a new log whose
		// sequence numbers are still above the old ones, and make every
		// node refresh everything, since changes may have been lost
		a.logger.Warn("replacing an unreadable certificate change log", zap.String("key", cacheChangesKey), zap.Error(err))
		log = cacheChanges{}
	}
	seq := max(time.Now().UnixNano(), log.Seq+1)
	if err != nil {
		log.Trimmed = seq - 1
	}
	log.Seq = seq
	log.Changes = append(log.Changes, cacheChange{Seq: seq, Host: host, Deleted: deleted, At: time.Now().UTC()})
	if over := len(log.Changes) - maxCacheChanges; over > 0 {
		log.Trimmed = log.Changes[over-1].Seq
		log.Changes = slices.Delete(log.Changes, 0, over)
	}
	data, err := json.Marshal(log)
	if err != nil {
		return err
	}
	return a.storage.Store(ctx, cacheChangesKey, data)
}

// loadChanges reads the log; a missing log is an empty one.
func (a *App) loadChanges(ctx context.Context) (cacheChanges, error) {
	var log cacheChanges
	data, err := a.storage.Load(ctx, cacheChangesKey)
	if errors.Is(err, fs.ErrNotExist) {
		return log, nil
	}
	if err != nil {
		return log, err
	}
	if err := json.Unmarshal(data, &log); err != nil {
		return log, fmt.Errorf("%s: %w", cacheChangesKey, err)
	}
	return log, nil
}

// syncCache applies the changes logged since the last call to this node's
// memory. The first call only notes where the log is: a node's cache
// starts empty, so nothing in it predates the log. It returns how many
// names were reloaded or dropped.
func (a *App) syncCache(ctx context.Context) (int, error) {
	log, err := a.loadChanges(ctx)
	if err != nil {
		return 0, err
	}
	a.cacheSync.mu.Lock()
	seen, primed := a.cacheSync.seen, a.cacheSync.primed
	a.cacheSync.seen, a.cacheSync.primed = max(seen, log.Seq), true
	a.cacheSync.mu.Unlock()
	if !primed || log.Seq <= seen {
		return 0, nil
	}
	if seen < log.Trimmed {
		// missed changes that are no longer in the log
		return a.refreshCached(ctx)
	}
	done := make(map[string]bool)
	changed := 0
	for _, c := range log.Changes {
		if c.Seq <= seen || done[c.Host] {
			continue
		}
		done[c.Host] = true
		if n, err := a.refreshName(ctx, c.Host); err != nil {
			a.logger.Warn("applying a certificate change from another node", zap.String("identifier", c.Host), zap.Error(err))
		} else {
			changed += n
		}
	}
	return changed, nil
}

// refreshCached compares every certificate this node holds with storage,
// reloading those that changed and dropping those deleted.
func (a *App) refreshCached(ctx context.Context) (int, error) {
	changed := 0
	for _, name := range a.cachedNames() {
		if ctx.Err() != nil {
			return changed, ctx.Err()
		}
		n, err := a.refreshName(ctx, name)
		if err != nil {
			a.logger.Warn("refreshing a certificate from storage", zap.String("identifier", name), zap.Error(err))
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
func (a *App) refreshName(ctx context.Context, name string) (int, error) {
	cached := a.cachedFor(name)
	if len(cached) == 0 {
		return 0, nil // not in memory: a handshake loads the stored one
	}
	stored, _, err := (renewStore{a}).stored(ctx, name)
	if errors.Is(err, fs.ErrNotExist) {
		a.evict(name)
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	if slices.ContainsFunc(cached, func(c certmagic.Certificate) bool {
		return c.Leaf != nil && c.Leaf.NotAfter.Equal(stored.NotAfter) && c.Leaf.SerialNumber.Cmp(stored.Serial) == 0
	}) {
		return 0, nil
	}
	if err := (renewStore{a}).replaceCached(ctx, name); err != nil {
		return 0, err
	}
	return 1, nil
}

// startCacheSync applies the other nodes' changes every
// cache_sync_interval until the config is unloaded.
func (a *App) startCacheSync() {
	interval := a.cacheSyncInterval()
	logger := a.logger.Named("cache_sync")
	go func() {
		defer func() {
			if r := recover(); r != nil {
				logger.Error("panic applying certificate changes; they reach this node at its renewal scans until the next config load",
					zap.Any("panic", r),
					zap.ByteString("stack", debug.Stack()))
			}
		}()
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			n, err := a.syncCache(a.ctx)
			switch {
			case err != nil && a.ctx.Err() == nil:
				logger.Warn("reading certificate changes from storage", zap.Error(err))
			case n > 0:
				logger.Info("applied certificate changes made by other nodes", zap.Int("count", n))
			}
			select {
			case <-a.ctx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
}

func (a *App) cacheSyncInterval() time.Duration {
	if a.CacheSyncInterval > 0 {
		return time.Duration(a.CacheSyncInterval)
	}
	return 10 * time.Second
}
