package issuance

import (
	"context"
	"sync"
)

// The CA's verdict on an order or renewal travels with it: watch puts a
// verdict into the context it runs certmagic with, certmagic passes that
// context to its events (HandleEvent), and the event marks the verdict.
// So nothing is kept per name between the order and its events, and an
// order sees only its own events.

// outcome is what certmagic's events said of an order.
type outcome int

const (
	outcomeRefused outcome = iota + 1 // cert_failed: the CA refused it
	outcomeRenewed                    // cert_obtained of a renewal
)

// verdict collects the events of one order or renewal of name.
type verdict struct {
	name string

	mu      sync.Mutex // protects refused and renewed
	refused bool
	renewed bool
}

type verdictKey struct{}

// noteVerdict records o in the verdict ctx carries, if it is an order of
// identifier, and reports whether there was one.
func noteVerdict(ctx context.Context, identifier string, o outcome) bool {
	v, ok := ctx.Value(verdictKey{}).(*verdict)
	if !ok || v.name != identifier {
		return false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch o {
	case outcomeRefused:
		v.refused = true
	case outcomeRenewed:
		v.renewed = true
	}
	return true
}

// watched is the verdict on one order or renewal that watch ran.
type watched struct {
	// The CA refused it (certmagic's cert_failed) while its context was
	// live: not a failure before the order (the issue lock, storage), after
	// it (saving the certificate), or because the context ended
	// (issue_timeout ran out, including in certmagic's own rate limiter, or
	// the configuration was unloaded). Only a refusal sets the backoff, so
	// that a storage blip or a slow queue does not block a name for
	// fail_backoff_minutes.
	refused bool
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
	return watched{refused: v.refused && ctx.Err() == nil, renewed: v.renewed}, err
}
