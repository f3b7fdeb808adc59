package kong

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// Lock blocks until this instance holds the lock name or ctx ends (the
// error then wraps ctx.Err()). See Storage for the design.
func (s *Storage) Lock(ctx context.Context, name string) error {
	key, pool, err := s.lockRow(ctx, name)
	if err != nil {
		return fmt.Errorf("acquiring lock %s: %w", name, err)
	}
	token := backend.Token()
	won, err := s.acquire(ctx, pool, key, token)
	if err != nil {
		return fmt.Errorf("acquiring lock %s: %w", name, err)
	}
	if won {
		s.hold(name, token)
		return nil
	}

	// Held elsewhere: wait for its release notification (subscribed before
	// the next attempt, so a release in between is not missed), or poll.
	wake, unsubscribe := s.client.notify.subscribe(key)
	defer unsubscribe()
	poll := s.poll
	if poll <= 0 {
		poll = min(s.rt.Lease/4, time.Second)
	}
	timer := time.NewTimer(poll)
	defer timer.Stop()
	for {
		won, err := s.acquire(ctx, pool, key, token)
		if err != nil {
			return fmt.Errorf("acquiring lock %s: %w", name, err)
		}
		if won {
			s.hold(name, token)
			return nil
		}
		timer.Reset(poll)
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			return fmt.Errorf("waiting for lock %s: %w", name, ctx.Err())
		}
	}
}

// TryLock makes one attempt at the lock name.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	key, pool, err := s.lockRow(ctx, name)
	if err != nil {
		return false, fmt.Errorf("trying lock %s: %w", name, err)
	}
	token := backend.Token()
	won, err := s.acquire(ctx, pool, key, token)
	if err != nil {
		return false, fmt.Errorf("trying lock %s: %w", name, err)
	}
	if won {
		s.hold(name, token)
	}
	return won, nil
}

// Unlock releases the lock name if this instance holds it, waking the
// nodes waiting for it. It is an error to unlock a lock this instance does
// not hold; a lock lost meanwhile (lease expired, taken over) is left to
// its new holder, with a warning.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	token, ok := s.held.Remove(name)
	if !ok {
		return fmt.Errorf("unlocking %s: not held by this instance", name)
	}
	key, pool, err := s.lockRow(ctx, name)
	if err != nil {
		return fmt.Errorf("unlocking %s: %w (the lock expires within %s)", name, err, s.rt.Lease)
	}
	// The caller's context is never cancelled; past one lease the row has
	// expired anyway.
	ctx, cancel := context.WithTimeout(ctx, max(s.rt.Lease, 5*time.Second))
	defer cancel()
	rows, err := pool.Query(ctx, sqlRelease, key, token)
	if err != nil {
		return fmt.Errorf("unlocking %s: %w (the lock expires within %s)", name, err, s.rt.Lease)
	}
	released := 0
	for rows.Next() {
		released++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("unlocking %s: %w (the lock expires within %s)", name, err, s.rt.Lease)
	}
	if released == 0 {
		s.logger.Warn("lock was lost before unlock: its lease expired and another instance may have held it",
			zap.String("lock_key", name))
	}
	return nil
}

// RenewLockLease extends the lease of the lock name, which this instance
// must hold, to at least lease from now.
func (s *Storage) RenewLockLease(ctx context.Context, name string, lease time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("renewing lock %s: lease must be positive, got %s", name, lease)
	}
	token, ok := s.held.Token(name)
	if !ok {
		return fmt.Errorf("renewing lock %s: not held by this instance", name)
	}
	if err := s.extend(ctx, name, token, lease); err != nil {
		return fmt.Errorf("renewing lock %s: %w", name, err)
	}
	return nil
}

// lockRow returns the lock's row key and the pool.
func (s *Storage) lockRow(ctx context.Context, name string) (string, *pgxpool.Pool, error) {
	if !validText(name) {
		return "", nil, errors.New("lock name is not valid UTF-8 or contains a NUL byte")
	}
	pool, err := s.client.get(ctx)
	if err != nil {
		return "", nil, err
	}
	return s.lockKey(name), pool, nil
}

func (s *Storage) lockKey(name string) string {
	return s.prefix + "/locks/" + name
}

// acquire makes one attempt: insert the lock row, or take over an expired
// one. If ctx ends while the statement is in flight it may have committed
// unseen, so the row is released in the background, by token.
func (s *Storage) acquire(ctx context.Context, pool *pgxpool.Pool, key, token string) (bool, error) {
	var won bool
	err := pool.QueryRow(ctx, sqlAcquire, newID(), key, token, s.rt.Lease.Seconds()).Scan(&won)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		if ctx.Err() != nil {
			go func() {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				rows, err := pool.Query(cctx, sqlRelease, key, token)
				if err == nil {
					rows.Close()
				}
			}()
		}
		return false, err
	}
	return won, nil
}

// hold records the lock as held and refreshes its lease until Unlock.
func (s *Storage) hold(name, token string) {
	s.held.Add(name, token, s.rt.Refresh, func(ctx context.Context, name, token string) error {
		return s.extend(ctx, name, token, s.rt.Lease)
	}, s.logger)
}

// errLockLost: the lock row no longer holds this instance's token.
var errLockLost = errors.New("lock lost: its lease expired and another instance took it over")

// extend sets the lock's lease to end no earlier than lease from now, if
// this token still holds it.
func (s *Storage) extend(ctx context.Context, name, token string, lease time.Duration) error {
	pool, err := s.client.get(ctx)
	if err != nil {
		return err
	}
	tag, err := pool.Exec(ctx, sqlRefresh, s.lockKey(name), token, lease.Seconds())
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return errLockLost
	}
	return nil
}
