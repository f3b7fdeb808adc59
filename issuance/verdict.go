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

// verdict collects what one CA said during one order or renewal.
type verdict struct {
	ca string // the CA's issuer key

	mu           sync.Mutex // protects the rest
	refused      string     // the CA's refusal of the name, "" if none
	unreachable  error      // the last time the CA could not be reached or failed (5xx)
	rateLimited  *acme.Problem
	retryAfter   time.Time
	polls        int       // pending answers to authorization polls
	firstPending time.Time // the first of them
}

// orderVerdict collects what the CAs said during one order or renewal of
// name: certmagic asks the app's CAs in turn (the primary, then the
// fallback CAs) until one issues, and each has its own verdict.
type orderVerdict struct {
	name string

	mu      sync.Mutex // protects the rest
	renewed bool
	cas     []*verdict // in the order the order reached them
}

// at returns the verdict of the CA with issuer key ca, made when the
// order first reaches it.
func (o *orderVerdict) at(ca string) *verdict {
	o.mu.Lock()
	defer o.mu.Unlock()
	if n := len(o.cas); n > 0 && o.cas[n-1].ca == ca {
		return o.cas[n-1]
	}
	for _, v := range o.cas {
		if v.ca == ca {
			return v
		}
	}
	v := &verdict{ca: ca}
	o.cas = append(o.cas, v)
	return v
}

// current returns the verdict of the CA the order reached last (nil:
// none yet).
func (o *orderVerdict) current() *verdict {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.cas) == 0 {
		return nil
	}
	return o.cas[len(o.cas)-1]
}

type verdictKey struct{}

// noteRenewed records that identifier's renewal was obtained in the
// verdict ctx carries, if it is an order of identifier, and reports
// whether there was one.
func noteRenewed(ctx context.Context, identifier string) bool {
	o, ok := ctx.Value(verdictKey{}).(*orderVerdict)
	if !ok || o.name != identifier {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.renewed = true
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

// watched is the verdict on one order or renewal that watch ran: one
// caWatched per CA it reached, in order.
type watched struct {
	cas []caWatched
	// A renewal of it was obtained (certmagic's cert_obtained): the other
	// nodes must reload it.
	renewed bool
}

// caWatched is one CA's verdict on an order or renewal.
type caWatched struct {
	ca string // the CA's issuer key
	// The CA refused the name: a challenge failed (or stayed pending past
	// the validation bound, or could not be presented), or the new order
	// was refused for its identifier. Only a refusal sets the backoff: not
	// a failure before the order (the issue lock, storage, the account),
	// after it (saving the certificate), because the context ended
	// (issue_timeout ran out, the configuration was unloaded), the CA was
	// unreachable or rate limited.
	refused bool
	// Why, in the CA's words where it gave them.
	reason string
	// The CA could not be reached, or answered 5xx (nil: it answered).
	unreachable error
	// The CA answered rateLimited, with Retry-After (zero if none).
	rateLimited *acme.Problem
	retryAfter  time.Time
}

// watch runs obtain, an order or renewal of name, with ctx carrying a
// verdict, and returns the verdict and obtain's error. A CA's
// unreachability is reported only for a CA that did not issue.
func watch(ctx context.Context, name string, obtain func(context.Context) error) (watched, error) {
	o := &orderVerdict{name: name}
	err := obtain(context.WithValue(ctx, verdictKey{}, o))
	o.mu.Lock()
	defer o.mu.Unlock()
	w := watched{renewed: o.renewed}
	for i, v := range o.cas {
		v.mu.Lock()
		c := caWatched{ca: v.ca, refused: v.refused != "", reason: v.refused, rateLimited: v.rateLimited, retryAfter: v.retryAfter}
		if err != nil || i < len(o.cas)-1 {
			c.unreachable = v.unreachable
		}
		v.mu.Unlock()
		w.cas = append(w.cas, c)
	}
	return w, err
}
