package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

func (s *Storage) lockKey(name string) string { return s.prefix + lockKind + name }
func (s *Storage) channel(name string) string { return s.prefix + chanKind + name }

// Lock acquires the lock name, blocking until it is free (released, or its
// holder's lease ran out) or ctx ends. See Storage's lock design.
func (s *Storage) Lock(ctx context.Context, name string) error {
	token := backend.Token()
	ok, _, err := s.acquire(ctx, name, token)
	if err != nil || ok {
		return err
	}
	// Taken: listen for its release before trying again, so that a release
	// between the failed attempt and the subscription is not missed.
	ps := s.client.Subscribe(ctx, s.channel(name))
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		return s.lockErr(ctx, name, "subscribing to unlock notifications", err)
	}
	released := ps.Channel()
	poll := s.poll
	if poll == 0 {
		poll = min(s.rt.Lease/4, time.Second)
	}
	for {
		ok, ttl, err := s.acquire(ctx, name, token)
		if err != nil || ok {
			return err
		}
		wait := poll
		if ttl >= 0 && ttl+time.Millisecond < wait {
			wait = ttl + time.Millisecond // the holder's lease runs out first
		}
		timer := time.NewTimer(wait)
		select {
		case <-released:
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("waiting for lock %s: %w", name, ctx.Err())
		}
		timer.Stop()
	}
}

// TryLock makes one attempt at acquiring the lock name.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	ok, _, err := s.acquire(ctx, name, backend.Token())
	return ok, err
}

// acquire makes one attempt at taking the lock name with token; on success
// it starts refreshing the lease. If the lock is taken, ttl is what remains
// of its holder's lease (-1: unknown).
func (s *Storage) acquire(ctx context.Context, name, token string) (ok bool, ttl time.Duration, err error) {
	n, err := acquireScript.Run(ctx, s.client, []string{s.lockKey(name)}, token, s.rt.Lease.Milliseconds()).Int64()
	if err != nil {
		return false, 0, s.lockErr(ctx, name, "acquiring", err)
	}
	if n != acquired {
		return false, time.Duration(max(n, -1)) * time.Millisecond, nil
	}
	s.held.Add(name, token, s.rt.Refresh, s.refresh, s.logger)
	return true, 0, nil
}

// refresh extends the lease of the lock name held with token to a full
// lease (if it is shorter).
func (s *Storage) refresh(ctx context.Context, name, token string) error {
	return s.extend(ctx, name, token, s.rt.Lease)
}

// extend extends the lease of the lock name held with token to at least
// lease.
func (s *Storage) extend(ctx context.Context, name, token string, lease time.Duration) error {
	n, err := extendScript.Run(ctx, s.client, []string{s.lockKey(name)}, token, max(lease.Milliseconds(), 1)).Int64()
	if err != nil {
		return fmt.Errorf("extending the lease of lock %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("extending the lease of lock %s: %w", name, errLost)
	}
	return nil
}

// RenewLockLease extends the lease of the lock name, which this instance
// must hold, to at least lease from now. The lease is never shortened: the
// lock stays refreshed every lock_refresh until Unlock.
func (s *Storage) RenewLockLease(ctx context.Context, name string, lease time.Duration) error {
	token, ok := s.held.Token(name)
	if !ok {
		return fmt.Errorf("renewing the lease of lock %s: %w", name, errNotHeld)
	}
	return s.extend(ctx, name, token, lease)
}

// Unlock releases the lock name if this instance holds it, and wakes the
// nodes waiting for it. Releasing a lock this instance does not hold is an
// error and changes nothing.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	token, ok := s.held.Remove(name)
	if !ok {
		return fmt.Errorf("unlocking %s: %w", name, errNotHeld)
	}
	n, err := unlockScript.Run(ctx, s.client, []string{s.lockKey(name)}, token, s.channel(name)).Int64()
	if err != nil {
		return fmt.Errorf("unlocking %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("unlocking %s: %w", name, errLost)
	}
	return nil
}

// lockErr reports a failure to lock, as the context's error if it ended.
func (s *Storage) lockErr(ctx context.Context, name, doing string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s lock %s: %w", doing, name, ctx.Err())
	}
	return fmt.Errorf("%s lock %s: %w", doing, name, err)
}

var (
	errNotHeld = errors.New("not held by this storage instance")
	errLost    = errors.New("lock lost: its lease ran out and it was released or taken over")
)

// acquired is what acquireScript returns when it took the lock.
const acquired = -3

// acquireScript takes the lock KEYS[1] with the token ARGV[1] for ARGV[2]
// ms, or returns the remaining lease of its holder in ms (-1: none).
var acquireScript = goredis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
	return -3
end
return redis.call('PTTL', KEYS[1])
`)

// extendScript extends the lease of the lock KEYS[1] to ARGV[2] ms if it
// is held with the token ARGV[1] and its lease is shorter; it returns 0 if
// the lock is not held with that token.
var extendScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
	return 0
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
`)

// unlockScript deletes the lock KEYS[1] if it is held with the token
// ARGV[1] and announces it on the channel ARGV[2]; it returns 0 if the
// lock is not held with that token.
var unlockScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
	return 0
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], '1')
return 1
`)
