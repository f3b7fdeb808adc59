package issuance

import (
	"context"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// The CA's verdict on an order or renewal travels with it: watch puts a
// verdict into the context it runs certmagic with, certmagic passes that
// context to acmez's requests (whose answers the CA transport reads,
// caclient.go) and to its events (HandleEvent), and both mark the verdict.
// So nothing is kept per name between the order and what the CA said, and
// an order sees only its own answers.

// verdict collects what the CA said during one order or renewal of name.
type verdict struct {
	name string

	mu           sync.Mutex // protects the rest
	renewed      bool
	refused      string // the CA's refusal of the name, "" if none
	unreachable  error  // the last time the CA could not be reached or failed (5xx)
	rateLimited  *acme.Problem
	retryAfter   time.Time
	polls        int       // pending answers to authorization polls
	firstPending time.Time // the first of them
}

type verdictKey struct{}

// noteRenewed records that identifier's renewal was obtained in the
// verdict ctx carries, if it is an order of identifier, and reports
// whether there was one.
func noteRenewed(ctx context.Context, identifier string) bool {
	v, ok := ctx.Value(verdictKey{}).(*verdict)
	if !ok || v.name != identifier {
		return false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.renewed = true
	return true
}

// noteRefused records the CA's refusal of the name (the first one wins:
// it is the cause).
func (v *verdict) noteRefused(reason string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.refused == "" {
		v.refused = reason
	}
}

// noteUnreachable records that a request to the CA failed without an
// answer about the name (network error, 5xx).
func (v *verdict) noteUnreachable(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.unreachable = err
}

// noteRateLimited records a rateLimited problem and its Retry-After.
func (v *verdict) noteRateLimited(p acme.Problem, until time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rateLimited = &p
	v.retryAfter = until
}

// notePending counts a pending answer to an authorization poll and
// returns how many there were before and how long since the first.
func (v *verdict) notePending() (polls int, since time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	if v.polls == 0 {
		v.firstPending = now
	}
	polls = v.polls
	v.polls++
	return polls, now.Sub(v.firstPending)
}

// watched is the verdict on one order or renewal that watch ran.
type watched struct {
	// The CA refused the name: a challenge failed (or stayed pending past
	// the validation bound), or the new order was refused for its
	// identifier. Only a refusal sets the backoff: not a failure before
	// the order (the issue lock, storage, the account), after it (saving
	// the certificate), because the context ended (issue_timeout ran out,
	// the configuration was unloaded), the CA was unreachable or rate
	// limited.
	refused bool
	// Why, in the CA's words where it gave them.
	reason string
	// The CA could not be reached, or answered 5xx (nil: it answered).
	unreachable error
	// The CA answered rateLimited, with Retry-After (zero if none).
	rateLimited *acme.Problem
	retryAfter  time.Time
	// A renewal of it was obtained (certmagic's cert_obtained): the other
	// nodes must reload it.
	renewed bool
}

// watch runs obtain, an order or renewal of name, with ctx carrying a
// verdict, and returns the verdict and obtain's error.
func watch(ctx context.Context, name string, obtain func(context.Context) error) (watched, error) {
	v := &verdict{name: name}
	err := obtain(context.WithValue(ctx, verdictKey{}, v))
	v.mu.Lock()
	defer v.mu.Unlock()
	w := watched{refused: v.refused != "", reason: v.refused, renewed: v.renewed, rateLimited: v.rateLimited, retryAfter: v.retryAfter}
	if err != nil {
		w.unreachable = v.unreachable
	}
	return w, err
}
