package consul

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

// Lock acquires the lock name, waiting (with a Consul blocking query on
// the lock key) until its holder releases it or loses it, or until ctx
// ends. See the type's doc comment for the design.
func (s *Storage) Lock(ctx context.Context, name string) error {
	if err := checkLockName(name); err != nil {
		return fmt.Errorf("locking: %w", err)
	}
	sid, err := s.newSession(ctx, name)
	if err != nil {
		return fmt.Errorf("locking %s: %w", name, err)
	}
	// The session must outlive a long wait, so it is renewed from now on.
	s.st.sessions.Add(sid, name, s.rt.Refresh, s.renewSession, s.logger)
	key := s.lockKey(name)
	var index uint64
	for {
		ok, err := s.acquire(ctx, key, sid)
		if err != nil {
			s.dropSession(sid)
			return s.lockErr(ctx, name, err)
		}
		if ok {
			s.setHeld(name, sid)
			return nil
		}
		// Held by another session: wait until the key changes and no
		// longer names a session (released, or deleted with its session).
		for {
			wctx, cancel := context.WithTimeout(ctx, lockWait+s.timeout)
			pair, meta, err := s.client.KV().Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: lockWait}).WithContext(wctx))
			cancel()
			if err != nil {
				s.dropSession(sid)
				return s.lockErr(ctx, name, err)
			}
			switch {
			case meta.LastIndex < index: // Consul's index went backwards: start over
				index = 0
			case meta.LastIndex == 0: // never block on 0, which returns at once
				index = 1
			default:
				index = meta.LastIndex
			}
			if pair == nil || pair.Session == "" {
				break
			}
		}
	}
}

// TryLock acquires the lock name if it is free, without waiting.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	if err := checkLockName(name); err != nil {
		return false, fmt.Errorf("trying lock: %w", err)
	}
	sid, err := s.newSession(ctx, name)
	if err != nil {
		return false, fmt.Errorf("trying lock %s: %w", name, err)
	}
	ok, err := s.acquire(ctx, s.lockKey(name), sid)
	if err != nil || !ok {
		s.destroySession(sid)
		if err != nil {
			return false, s.lockErr(ctx, name, err)
		}
		return false, nil
	}
	s.st.sessions.Add(sid, name, s.rt.Refresh, s.renewSession, s.logger)
	s.setHeld(name, sid)
	return true, nil
}

// Unlock releases the lock name if this instance holds it: destroying its
// session deletes the lock key only while the session holds it.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.st.mu.Lock()
	sid, ok := s.st.locks[name]
	delete(s.st.locks, name)
	s.st.mu.Unlock()
	if !ok {
		return fmt.Errorf("unlocking %s: %w", name, errNotHeld)
	}
	s.st.sessions.Remove(sid)
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if _, err := s.client.Session().Destroy(sid, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return s.fail("unlocking", name, fmt.Errorf("destroying session (the lock expires within lock_lease): %w", err))
	}
	return nil
}

// RenewLockLease renews the session of the held lock name. Consul renews
// by the session's TTL (half of lock_lease), not by leaseDuration.
func (s *Storage) RenewLockLease(ctx context.Context, name string, leaseDuration time.Duration) error {
	s.st.mu.Lock()
	sid, ok := s.st.locks[name]
	s.st.mu.Unlock()
	if !ok {
		return fmt.Errorf("renewing lock %s: %w", name, errNotHeld)
	}
	if err := s.renewSession(ctx, sid, name); err != nil {
		return fmt.Errorf("renewing lock %s: %w", name, err)
	}
	return nil
}

// newSession creates the session that holds (or waits for) one lock. The
// API client cannot send a lock delay of 0 (it omits zero), so the request
// is written directly.
func (s *Storage) newSession(ctx context.Context, name string) (string, error) {
	s.st.mu.Lock()
	crashed := s.st.crashed
	s.st.mu.Unlock()
	if crashed {
		return "", errors.New("storage instance was crashed by a test")
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	body := map[string]any{
		"Name":      "caddy-acme lock " + name,
		"TTL":       s.ttl.String(),
		"LockDelay": "0s",
		"Behavior":  api.SessionBehaviorDelete,
	}
	var out struct{ ID string }
	if _, err := s.client.Raw().Write("/v1/session/create", body, &out, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return "", s.fail("creating session for lock", name, err)
	}
	if out.ID == "" {
		return "", errors.New("creating session: consul returned no session ID")
	}
	return out.ID, nil
}

// renewSession renews session sid (for backend.Held and RenewLockLease).
func (s *Storage) renewSession(ctx context.Context, sid, name string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	entry, _, err := s.client.Session().Renew(sid, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return s.fail("renewing session of lock", name, err)
	}
	if entry == nil {
		return fmt.Errorf("renewing session of lock %s: %w", name, errSessionGone)
	}
	return nil
}

// acquire makes one attempt to take the lock key with session sid.
func (s *Storage) acquire(ctx context.Context, key, sid string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ok, _, err := s.client.KV().Acquire(&api.KVPair{Key: key, Value: []byte(s.owner), Session: sid},
		(&api.WriteOptions{}).WithContext(ctx))
	return ok, err
}

// setHeld records that this instance holds name with session sid.
func (s *Storage) setHeld(name, sid string) {
	s.st.mu.Lock()
	if s.st.locks == nil {
		s.st.locks = make(map[string]string)
	}
	old, had := s.st.locks[name]
	s.st.locks[name] = sid
	s.st.mu.Unlock()
	if had && old != sid { // a session this instance lost the lock with
		s.dropSession(old)
	}
}

// dropSession stops renewing session sid and destroys it.
func (s *Storage) dropSession(sid string) {
	s.st.sessions.Remove(sid)
	s.destroySession(sid)
}

// destroySession destroys session sid, best effort: an undestroyed session
// expires by itself.
func (s *Storage) destroySession(sid string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if _, err := s.client.Session().Destroy(sid, (&api.WriteOptions{}).WithContext(ctx)); err != nil && s.logger != nil {
		s.logger.Warn("destroying an unused lock session", zap.String("session", sid), zap.Error(err))
	}
}

// lockErr reports a failed Lock or TryLock: the context's error if it
// ended, else the Consul error.
func (s *Storage) lockErr(ctx context.Context, name string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("locking %s: %w", name, ctx.Err())
	}
	return s.fail("locking", name, err)
}

// lockKey is the Consul key of the lock name.
func (s *Storage) lockKey(name string) string {
	return s.prefix + locksSuffix + "/" + name
}

// checkLockName refuses lock names whose key would not reach Consul as it
// is (see checkKey), which would make two names one lock.
func checkLockName(name string) error {
	if name == "" {
		return fmt.Errorf("lock name: %w: empty", fs.ErrInvalid)
	}
	if err := checkKey(name); err != nil {
		return fmt.Errorf("lock name %q: %w", name, err)
	}
	return nil
}

var (
	errNotHeld     = errors.New("lock not held by this storage instance")
	errSessionGone = errors.New("session expired or destroyed: the lock may have been taken over")
)

// lockWait is how long one blocking query waits for the lock key to change
// before asking again.
const lockWait = time.Minute
