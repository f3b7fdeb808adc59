package issuance

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
)

// orderQueue paces a node's new orders, by default at certmagic's own
// limit for one account at one CA (RateLimitEvents per
// RateLimitEventsWindow: 10 per 10 s unless a program embedding Caddy
// changed them). certmagic's limiter
// waits inside the order, holding the issue lock and counting against the
// order's deadline; waiting here first leaves nothing for it to wait for.
type orderQueue struct {
	limiter *certmagic.RingBufferRateLimiter
	waiting atomic.Int64 // orders in wait
}

// newOrderQueue returns a node's order queue placing n orders per window,
// or nil when that limit is off or invalid.
func newOrderQueue(n int, window time.Duration) *orderQueue {
	if n <= 0 || window <= 0 {
		return nil
	}
	return &orderQueue{limiter: certmagic.NewRateLimiter(n, window)}
}

// wait returns when it is an order's turn, or ctx's error.
func (q *orderQueue) wait(ctx context.Context) error {
	if q == nil {
		return nil
	}
	q.waiting.Add(1)
	defer q.waiting.Add(-1)
	return q.limiter.Wait(ctx)
}

// stop ends the queue's goroutine.
func (q *orderQueue) stop() {
	if q != nil {
		q.limiter.Stop()
	}
}

// notReady is the error of a handshake that gave up waiting for name's
// order after d, saying how many orders are queued.
func (q *orderQueue) notReady(name string, d time.Duration) error {
	if q != nil {
		if n := q.waiting.Load(); n > 0 {
			return fmt.Errorf("certificate for %s is not ready after %s (issue_timeout); it is still being obtained (new orders waiting for their turn: %d; at most %d per %s are placed)",
				name, d, n, q.limiter.MaxEvents(), q.limiter.Window())
		}
	}
	return fmt.Errorf("certificate for %s is not ready after %s (issue_timeout); it is still being obtained", name, d)
}
