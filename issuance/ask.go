package issuance

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// askCache keeps Options.Ask's recent answers per name, so that a name
// asked about again (the next handshake, or a flood of the same name) does
// not ask again for a while: allowed for askAllowTTL, refused (or the
// endpoint failed) for askRefusedTTL. It holds at most askCacheSize names.
type askCache struct {
	mu      sync.Mutex
	answers map[string]askAnswer
}

type askAnswer struct {
	err   error
	until time.Time
}

const (
	askAllowTTL   = time.Minute
	askRefusedTTL = 10 * time.Second
	askCacheSize  = 10000
	askTimeout    = 10 * time.Second
)

func newAskCache() *askCache { return &askCache{answers: make(map[string]askAnswer)} }

// ask returns ask's answer for name, from the cache or asked now (within
// askTimeout).
func (c *askCache) ask(ctx context.Context, name string, ask func(context.Context, string) error) error {
	now := time.Now()
	c.mu.Lock()
	a, ok := c.answers[name]
	c.mu.Unlock()
	if ok && now.Before(a.until) {
		return a.err
	}

	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	err := ask(ctx, name)
	ttl := askAllowTTL
	if err != nil {
		err = fmt.Errorf("%s: not permitted: %w", name, err)
		ttl = askRefusedTTL
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.answers) >= askCacheSize {
		for k, a := range c.answers { // expired first, else any
			if now.After(a.until) || len(c.answers) >= askCacheSize {
				delete(c.answers, k)
			}
			if len(c.answers) < askCacheSize/2 {
				break
			}
		}
	}
	c.answers[name] = askAnswer{err: err, until: now.Add(ttl)}
	return err
}
