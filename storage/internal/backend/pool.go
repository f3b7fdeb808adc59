package backend

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
)

// Pool shares clients of type T among storage instances with the same
// connection settings, across config reloads: Caddy builds new storage
// modules on every reload while the old ones may still be in use, so the
// client is closed only when its last user releases it.
type Pool[T caddy.Destructor] struct {
	pool *caddy.UsagePool
}

// NewPool returns an empty pool; keep one in a package variable.
func NewPool[T caddy.Destructor]() *Pool[T] {
	return &Pool[T]{pool: caddy.NewUsagePool()}
}

// Acquire returns the client for key, creating it with newClient if none is
// shared yet. Every successful Acquire needs one Release.
func (p *Pool[T]) Acquire(key string, newClient func() (T, error)) (T, error) {
	val, _, err := p.pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newClient()
	})
	if err != nil {
		var zero T
		return zero, err
	}
	client, ok := val.(T)
	if !ok {
		var zero T
		return zero, fmt.Errorf("pooled client for %s has type %T", key, val)
	}
	return client, nil
}

// Release drops one use of the client for key, destroying it with the last.
func (p *Pool[T]) Release(key string) error {
	_, err := p.pool.Delete(key)
	return err
}
