package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// Lock obtains the lock name, waiting until it is free or ctx ends. See
// Storage for the design.
func (s *Storage) Lock(ctx context.Context, name string) error {
	name = backend.Clean(name)
	if err := checkLockName(name); err != nil {
		return err
	}
	token := backend.Token()
	start := time.Now()
	for {
		ok, err := s.tryAcquire(ctx, name, token)
		if err != nil {
			return fmt.Errorf("locking %s: %w", name, err)
		}
		if ok {
			s.hold(name, token)
			return nil
		}
		if err := backend.Wait(ctx, s.pollInterval(time.Since(start))); err != nil {
			return fmt.Errorf("locking %s: %w", name, err)
		}
	}
}

// TryLock obtains the lock name if it is free, without waiting.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	name = backend.Clean(name)
	if err := checkLockName(name); err != nil {
		return false, err
	}
	token := backend.Token()
	ok, err := s.tryAcquire(ctx, name, token)
	if err != nil {
		return false, fmt.Errorf("locking %s: %w", name, err)
	}
	if ok {
		s.hold(name, token)
	}
	return ok, nil
}

// Unlock releases the lock name if this instance holds it.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	name = backend.Clean(name)
	token, ok := s.held.Remove(name)
	if !ok {
		return fmt.Errorf("unlocking %s: %w", name, errNotHeld)
	}
	if err := s.writeOwn(ctx, name, token, lockData{Holder: s.holder}); err != nil {
		return fmt.Errorf("unlocking %s: %w", name, err)
	}
	return nil
}

// RenewLockLease extends the lease of a lock this instance holds, by one
// lock_lease from now. The lease is also extended in the background every
// lock_refresh for as long as the lock is held, so leaseDuration is not
// needed beyond checking that the lock is still ours.
func (s *Storage) RenewLockLease(ctx context.Context, name string, leaseDuration time.Duration) error {
	name = backend.Clean(name)
	token, ok := s.held.Token(name)
	if !ok {
		return fmt.Errorf("renewing lock %s: %w", name, errNotHeld)
	}
	if err := s.refresh(ctx, name, token); err != nil {
		return fmt.Errorf("renewing lock %s: %w", name, err)
	}
	return nil
}

func checkLockName(name string) error {
	if err := checkNonEmpty(name); err != nil {
		return fmt.Errorf("locking %q: %w", name, err)
	}
	return nil
}

// hold records a lock as held and refreshes it until Unlock.
func (s *Storage) hold(name, token string) {
	s.held.Add(name, token, s.rt.Refresh, s.refresh, s.logger.With(zap.String("storage", "acme_vault")))
}

// refresh writes a new version of a lock this instance holds, which Vault
// deletes lock_lease after it was written.
func (s *Storage) refresh(ctx context.Context, name, token string) error {
	return s.writeOwn(ctx, name, token, lockData{Token: token, Holder: s.holder})
}

// tryAcquire makes one attempt at taking the lock name for token.
func (s *Storage) tryAcquire(ctx context.Context, name, token string) (bool, error) {
	st, err := s.readLock(ctx, name)
	if err != nil {
		return false, err
	}
	if st.token != "" {
		return false, nil // held (maybe by an earlier Lock of this instance)
	}
	if !st.hasMetadata {
		if err := s.writeLockMetadata(ctx, name); err != nil {
			return false, err
		}
	}
	w, err := s.writeLock(ctx, name, st.version, lockData{Token: token, Holder: s.holder})
	if errors.Is(err, errCASMismatch) {
		return false, nil // another instance was quicker
	}
	if err != nil {
		return false, err
	}
	if !s.expiresAfterLease(w) {
		// The metadata carries another lease, or none (created by someone
		// else): set ours, and write a version that gets it.
		if err := s.writeLockMetadata(ctx, name); err != nil {
			return false, s.releaseAfter(ctx, name, token, err)
		}
		if _, err := s.writeLock(ctx, name, w.Version, lockData{Token: token, Holder: s.holder}); err != nil {
			return false, s.releaseAfter(ctx, name, token, err)
		}
	}
	return true, nil
}

// releaseAfter gives back a lock just acquired when setting it up failed,
// and returns that failure.
func (s *Storage) releaseAfter(ctx context.Context, name, token string, cause error) error {
	if err := s.writeOwn(context.WithoutCancel(ctx), name, token, lockData{Holder: s.holder}); err != nil {
		s.logger.Error("releasing a lock after failing to set its lease",
			zap.String("lock_key", name), zap.Error(err))
	}
	return cause
}

// expiresAfterLease reports whether Vault set the version written to be
// deleted lock_lease after it was written.
func (s *Storage) expiresAfterLease(w versionMetadata) bool {
	if w.DeletionTime == "" {
		return false
	}
	del, err := time.Parse(time.RFC3339Nano, w.DeletionTime)
	if err != nil {
		return false
	}
	d := del.Sub(w.CreatedTime) - s.serverLease()
	return d > -time.Millisecond && d < time.Millisecond
}

// serverLease is lock_lease rounded up to whole seconds: Vault keeps
// delete_version_after in seconds (and would cut 1.5s to 1s).
func (s *Storage) serverLease() time.Duration {
	return (s.rt.Lease + time.Second - 1).Truncate(time.Second)
}

// writeOwn writes data as the next version of the lock name if its current
// version is live and carries token: a refresh, or a release when data has
// no token. The writes of this instance to one lock (the background
// refresh, RenewLockLease, Unlock) take turns; a check-and-set that fails
// all the same is tried again, and is errLost once the lock has another
// holder.
func (s *Storage) writeOwn(ctx context.Context, name, token string, data lockData) error {
	defer s.own.lock(name)()
	for range 3 {
		st, err := s.readLock(ctx, name)
		if err != nil {
			return err
		}
		if st.token != token {
			return errLost
		}
		_, err = s.writeLock(ctx, name, st.version, data)
		if !errors.Is(err, errCASMismatch) {
			return err
		}
	}
	return errLost
}

// lockState is what a read of a lock secret tells.
type lockState struct {
	version     int    // the current version, deleted or not: the next check-and-set
	token       string // the holder's token; "" when free
	hasMetadata bool   // false: the lock secret was never written
}

// readLock reads the current version of the lock name. A version Vault
// deleted (its lease ran out) or one without a token means free.
func (s *Storage) readLock(ctx context.Context, name string) (lockState, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	defer cancel()
	for range 3 {
		var resp struct {
			Data struct {
				Data     *lockData       `json:"data"`
				Metadata versionMetadata `json:"metadata"`
			} `json:"data"`
		}
		status, err := s.client.call(ctx, http.MethodGet, s.mount+"/data/"+s.lockPrefix+"/"+name, nil, nil, &resp)
		if err != nil {
			return lockState{}, err
		}
		if v := resp.Data.Metadata.Version; v > 0 {
			st := lockState{version: v, hasMetadata: true}
			if status == http.StatusOK && resp.Data.Data != nil {
				st.token = resp.Data.Data.Token
			}
			return st, nil
		}
		// No version: the lock secret is missing, or has metadata without
		// versions. The metadata tells which, and the version to
		// check-and-set against.
		var meta struct {
			Data struct {
				CurrentVersion int `json:"current_version"`
			} `json:"data"`
		}
		status, err = s.client.call(ctx, http.MethodGet, s.metaPath(s.lockPrefix, name), nil, nil, &meta)
		if err != nil {
			return lockState{}, err
		}
		if status == http.StatusNotFound {
			return lockState{}, nil
		}
		if meta.Data.CurrentVersion == 0 {
			return lockState{hasMetadata: true}, nil
		}
		// a version was written between the two reads: read it
	}
	return lockState{}, errors.New("lock changed during every read")
}

// writeLockMetadata makes Vault delete every version of the lock name
// lock_lease after it was written, and keep few.
func (s *Storage) writeLockMetadata(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	defer cancel()
	body, err := json.Marshal(map[string]any{
		"delete_version_after": fmt.Sprintf("%ds", int64(s.serverLease()/time.Second)),
		"max_versions":         lockMaxVersions,
	})
	if err != nil {
		return err
	}
	_, err = s.client.call(ctx, http.MethodPut, s.metaPath(s.lockPrefix, name), nil, body, nil)
	return err
}

// writeLock writes data as version cas+1 of the lock name if cas is still
// its current version, else returns errCASMismatch.
func (s *Storage) writeLock(ctx context.Context, name string, cas int, data lockData) (versionMetadata, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	defer cancel()
	body, err := json.Marshal(writeRequest{Options: &writeOptions{CAS: cas}, Data: data})
	if err != nil {
		return versionMetadata{}, err
	}
	var resp writeResponse
	status, err := s.client.call(ctx, http.MethodPut, s.mount+"/data/"+s.lockPrefix+"/"+name, nil, body, &resp)
	if isCASMismatch(err) {
		return versionMetadata{}, errCASMismatch
	}
	if err != nil {
		return versionMetadata{}, err
	}
	if status == http.StatusNotFound || resp.Data.Version == 0 {
		return versionMetadata{}, fmt.Errorf("%s is not a KV version 2 mount (a write returned no version)", s.mount)
	}
	return resp.Data, nil
}

// isCASMismatch reports whether err is Vault's refusal of a write whose
// check-and-set version is not the secret's current one.
func isCASMismatch(err error) bool {
	var re *responseError
	return errors.As(err, &re) && re.status == http.StatusBadRequest && strings.Contains(strings.Join(re.errs, " "), "check-and-set")
}

// pollInterval is how long a waiting Lock sleeps before looking again,
// having waited for waited: a tenth of that, at least 10ms and at most
// min(lock_lease/10, 100ms), with ±20% jitter.
func (s *Storage) pollInterval(waited time.Duration) time.Duration {
	hi := min(s.rt.Lease/10, maxPoll)
	d := min(max(waited/10, minPoll), hi)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64())) //nolint:gosec // a jitter, not a secret
}

// lockData is the data of a lock secret's version.
type lockData struct {
	Token  string `json:"token"`            // the holder's random token; "" when released
	Holder string `json:"holder,omitempty"` // host/pid of the last writer, for people
}

var (
	errCASMismatch = errors.New("check-and-set version mismatch")
	errNotHeld     = errors.New("lock not held by this instance")
	errLost        = errors.New("lock no longer held: its lease ran out and it may have been taken over")
)

const (
	minPoll         = 10 * time.Millisecond
	maxPoll         = 100 * time.Millisecond
	lockMaxVersions = 4
)

// nameLocks are mutexes by lock name, created on demand and dropped when
// unused.
type nameLocks struct {
	mu sync.Mutex // protects m
	m  map[string]*nameLock
}

type nameLock struct {
	sync.Mutex
	users int // protected by nameLocks.mu
}

// lock locks the mutex of name and returns its unlock.
func (n *nameLocks) lock(name string) func() {
	n.mu.Lock()
	if n.m == nil {
		n.m = make(map[string]*nameLock)
	}
	l := n.m[name]
	if l == nil {
		l = new(nameLock)
		n.m[name] = l
	}
	l.users++
	n.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		n.mu.Lock()
		if l.users--; l.users == 0 {
			delete(n.m, name)
		}
		n.mu.Unlock()
	}
}
