package issuance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// Three kinds of pause keep orders away from a CA that said no, each for
// its own cause:
//
//   - a backoff per CA and name after the CA refused the name (a failed
//     validation, a rejected identifier): in storage, for the cluster, for
//     fail_backoff_minutes counted from the failure with the setting in
//     force when it is read;
//   - a pause of every new order to the CA on this node while the CA
//     cannot be reached or fails (5xx): in memory, growing from 5 s to
//     5 min while it lasts, logged when it starts and ends;
//   - a pause of the orders in the scope of a rateLimited answer (the
//     account, or a registered domain its message names) until its
//     Retry-After: in storage, for the cluster.

// backoff is what storage holds at BackoffKey(ca, name) after the CA
// refused an order.
type backoff struct {
	Host     string    `json:"host"`
	CA       string    `json:"ca"`
	FailedAt time.Time `json:"failed_at"`
	Until    time.Time `json:"until"` // FailedAt + fail_backoff_minutes when written
	Error    string    `json:"error"`
}

// BackoffError is the error for a name in backoff after the CA refused
// it, with Kong's message (as opposed to a storage error reading the
// backoff).
type BackoffError string

func (e BackoffError) Error() string { return string(e) }

// backoffVerdict is the answer to whether name is in backoff at the CA
// after a failed order (on this node or any other sharing the storage),
// from what reading its record (key) gave: a BackoffError or nil. The
// record is read against the current FailBackoff: lowering it (or 0)
// takes effect at once.
func (r *Runtime) backoffVerdict(name, key string, data []byte, err error) error {
	d := r.opts.FailBackoff
	if d <= 0 || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading backoff of %s: %w", name, err)
	}
	var b backoff
	if err := json.Unmarshal(data, &b); err != nil || b.FailedAt.IsZero() {
		// written by someone else; an unreadable backoff must not block issuance forever
		r.logger.Warn("ignoring unreadable backoff record",
			zap.String("identifier", name),
			zap.String("key", key),
			zap.NamedError("decode_error", err))
		return nil
	}
	if left := time.Until(b.FailedAt.Add(d)); left > 0 {
		return BackoffError(fmt.Sprintf("please try again in %d seconds for host %s because of previous failure; this is configurable with fail_backoff_minutes",
			int(math.Ceil(left.Seconds())), name))
	}
	return nil
}

// setBackoff records that the CA refused an order of name, so that no
// node orders it again from this CA for FailBackoff.
func (r *Runtime) setBackoff(ca *caState, name, reason string) {
	d := r.opts.FailBackoff
	if d <= 0 {
		return
	}
	now := time.Now().UTC()
	data, err := json.Marshal(backoff{Host: name, CA: ca.key, FailedAt: now, Until: now.Add(d), Error: reason})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 30*time.Second)
		defer cancel()
		err = r.storage.Store(ctx, BackoffKey(ca.key, name), data)
	}
	if err != nil {
		r.logger.Error("recording backoff after failed order",
			zap.String("identifier", name),
			zap.Error(err))
		return
	}
	r.logger.Warn("the CA refused the certificate order; backing off",
		zap.String("identifier", name),
		zap.String("ca", ca.key),
		zap.Duration("backoff", d),
		zap.String("error", reason))
}

// PauseError is the error of a handshake or order refused because new
// orders to the CA are paused: it was unreachable, or rate limited the
// account or the name's registered domain.
type PauseError string

func (e PauseError) Error() string { return string(e) }

// The bounds of a node's pause after the CA could not be reached.
const (
	caPauseMin = 5 * time.Second
	caPauseMax = 5 * time.Minute
)

// caPause is a node's pause of new orders while the CA is unreachable.
type caPause struct {
	mu    sync.Mutex
	until time.Time
	step  time.Duration // the last pause; 0: the CA answered last
	cause error
}

// check returns a PauseError while the pause lasts.
func (p *caPause) check(ca string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if left := time.Until(p.until); left > 0 {
		return PauseError(fmt.Sprintf("new certificate orders are paused for %d more seconds: the CA %s could not be reached: %v",
			int(math.Ceil(left.Seconds())), ca, p.cause))
	}
	return nil
}

// failed starts or extends the pause after the CA could not be reached,
// and reports whether it started one (the CA answered before).
func (p *caPause) failed(cause error) (d time.Duration, started bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	started = p.step == 0
	p.step = min(max(2*p.step, caPauseMin), caPauseMax)
	p.until = time.Now().Add(p.step)
	p.cause = cause
	return p.step, started
}

// answered ends the pause after the CA answered an order, and reports
// whether there was one.
func (p *caPause) answered() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	was := p.step != 0
	p.step, p.until, p.cause = 0, time.Time{}, nil
	return was
}

// caUnreachable pauses this node's new orders to the CA after an order
// could not reach it.
func (r *Runtime) caUnreachable(ca *caState, name string, cause error) {
	d, started := ca.pause.failed(cause)
	if started {
		r.logger.Error("the CA cannot be reached; pausing new certificate orders to it on this node",
			zap.String("ca", ca.key),
			zap.String("identifier", name),
			zap.Duration("pause", d),
			zap.Error(cause))
		return
	}
	r.logger.Debug("the CA still cannot be reached; pause extended",
		zap.String("ca", ca.key),
		zap.Duration("pause", d),
		zap.Error(cause))
}

// caAnswered ends the node's pause of the CA, if any, after it answered.
func (r *Runtime) caAnswered(ca *caState) {
	if ca.pause.answered() {
		r.logger.Info("the CA answers again; new certificate orders resume", zap.String("ca", ca.key))
	}
}

// rateLimit is what storage holds at RateLimitKey(ca, scope) after the CA
// answered rateLimited with a Retry-After.
type rateLimit struct {
	Scope string    `json:"scope"` // "account" or a registered domain
	Until time.Time `json:"until"`
	Error string    `json:"error"`
}

// rateLimitAccount is the scope of a rate limit of the whole account.
const rateLimitAccount = "account"

// setRateLimit pauses the orders in the scope of the CA's rateLimited
// answer to an order of name until its Retry-After (a minute if it gave
// none): the registered domain of name if the CA's message names it, else
// the account.
func (r *Runtime) setRateLimit(ca *caState, name string, p *acme.Problem, until time.Time) {
	if until.IsZero() {
		until = time.Now().Add(time.Minute)
	}
	scope := rateLimitAccount
	if domain := RegisteredDomain(name); strings.Contains(strings.ToLower(p.Detail), domain) {
		scope = domain
	}
	data, err := json.Marshal(rateLimit{Scope: scope, Until: until.UTC(), Error: p.Error()})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 30*time.Second)
		defer cancel()
		err = r.storage.Store(ctx, RateLimitKey(ca.key, scope), data)
	}
	if err != nil {
		r.logger.Error("recording the CA's rate limit", zap.String("identifier", name), zap.Error(err))
		return
	}
	r.logger.Warn("the CA rate limited certificate orders; pausing them in its scope on every node",
		zap.String("ca", ca.key),
		zap.String("scope", scope),
		zap.Time("until", until),
		zap.String("error", p.Error()))
}

// rateLimitScopes are the scopes of the CA's rate limits that pause orders
// of name, in the order they are checked.
func rateLimitScopes(name string) [2]string {
	return [2]string{rateLimitAccount, RegisteredDomain(name)}
}

// rateLimitVerdict is a PauseError while name's scope (its registered
// domain or the account) is rate limited by the CA, from what reading the
// scope's record gave.
func (r *Runtime) rateLimitVerdict(ca *caState, name, scope string, data []byte, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the CA's rate limit of %s: %w", scope, err)
	}
	var l rateLimit
	if err := json.Unmarshal(data, &l); err != nil {
		r.logger.Warn("ignoring unreadable rate limit record", zap.String("key", RateLimitKey(ca.key, scope)), zap.Error(err))
		return nil
	}
	if left := time.Until(l.Until); left > 0 {
		what := "the account"
		if scope != rateLimitAccount {
			what = scope
		}
		return PauseError(fmt.Sprintf("new certificate orders for %s are paused for %d more seconds: the CA %s rate limited %s: %s",
			name, int(math.Ceil(left.Seconds())), ca.key, what, l.Error))
	}
	return nil
}
