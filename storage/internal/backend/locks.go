package backend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"runtime/debug"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Token returns a new random lock owner token (128 bits, hex).
func Token() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("caddy-acme: reading random token: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// Held is the set of locks one storage instance holds, each with its owner
// token and a goroutine that refreshes its lease until it is released.
type Held struct {
	mu    sync.Mutex // protects locks
	locks map[string]*heldLock
}

type heldLock struct {
	token string
	stop  context.CancelFunc
	done  chan struct{}
}

// Add records that the lock name is held with token, and refreshes it every
// interval by calling refresh until Remove. A refresh error is logged; the
// lease may then lapse.
func (h *Held) Add(name, token string, interval time.Duration, refresh func(ctx context.Context, name, token string) error, logger *zap.Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	l := &heldLock{token: token, stop: cancel, done: make(chan struct{})}
	h.mu.Lock()
	if h.locks == nil {
		h.locks = make(map[string]*heldLock)
	}
	if old, ok := h.locks[name]; ok {
		old.stop()
	}
	h.locks[name] = l
	h.mu.Unlock()

	go func() {
		defer close(l.done)
		defer func() {
			if r := recover(); r != nil {
				logger.Error("panic refreshing lock lease",
					zap.String("lock_key", name),
					zap.Any("panic", r),
					zap.ByteString("stack", debug.Stack()))
			}
		}()
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
			rctx, rcancel := context.WithTimeout(ctx, interval)
			err := refresh(rctx, name, token)
			rcancel()
			if err != nil && ctx.Err() == nil {
				logger.Error("refreshing lock lease",
					zap.String("lock_key", name),
					zap.Error(err))
			}
		}
	}()
}

// Token returns the owner token of a held lock.
func (h *Held) Token(name string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l, ok := h.locks[name]
	if !ok {
		return "", false
	}
	return l.token, true
}

// Remove stops refreshing the lock name and forgets it, returning its
// token; it waits until a refresh in progress has finished.
func (h *Held) Remove(name string) (string, bool) {
	h.mu.Lock()
	l, ok := h.locks[name]
	delete(h.locks, name)
	h.mu.Unlock()
	if !ok {
		return "", false
	}
	l.stop()
	<-l.done
	return l.token, true
}

// Abandon stops refreshing every held lock without releasing any, as a
// crashed process would; tests use it to check takeover after the lease.
func (h *Held) Abandon() {
	h.mu.Lock()
	locks := h.locks
	h.locks = nil
	h.mu.Unlock()
	for _, l := range locks {
		l.stop()
		<-l.done
	}
}

// Wait returns after d, or early with ctx's error when ctx ends first.
func Wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
