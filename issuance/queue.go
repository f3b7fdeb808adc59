package issuance

import (
	"context"
	"errors"
	"fmt"
	"sync"
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

// intake bounds the names waiting for an order on a node (queued, not
// yet at the CA): at most max in all, and at most perDomain under one
// registered domain, so that a flood of names under one domain cannot
// keep the others out. perDomain is the budget when there is one (more
// names than the budget could never be ordered), else max.
type intake struct {
	max, perDomain int

	mu      sync.Mutex // protects n and domains
	n       int
	domains map[string]int // waiting names by registered domain, only those > 0
}

// newIntake returns a node's intake bound.
func newIntake(max, budget int) *intake {
	perDomain := max
	if budget > 0 && budget < max {
		perDomain = budget
	}
	return &intake{max: max, perDomain: perDomain, domains: make(map[string]int)}
}

// ErrIntakeFull is wrapped by the error of a handshake refused because too
// many names are waiting for an order on this node.
var ErrIntakeFull = errors.New("too many names are waiting for a certificate order on this node")

// enter counts a name of domain in, or returns ErrIntakeFull (wrapped)
// past the bound. pinned (POST /acme) is always counted in.
func (in *intake) enter(domain string, pinned bool) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !pinned {
		if in.n >= in.max {
			metrics.intakeRefusals.Inc()
			return fmt.Errorf("%w (%d, max_pending_orders); try again later", ErrIntakeFull, in.max)
		}
		if in.domains[domain] >= in.perDomain {
			metrics.intakeRefusals.Inc()
			return fmt.Errorf("%w: %d names under %s already wait (at most %d per registered domain: max_pending_orders, or domain_budget when lower); try again later",
				ErrIntakeFull, in.domains[domain], domain, in.perDomain)
		}
	}
	in.n++
	in.domains[domain]++
	return nil
}

// leave counts a name of domain out.
func (in *intake) leave(domain string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.n--
	if in.domains[domain]--; in.domains[domain] <= 0 {
		delete(in.domains, domain)
	}
}
