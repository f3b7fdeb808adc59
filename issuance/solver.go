package issuance

import (
	"context"
	"fmt"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

// WatchSolver wraps a challenge solver (the app's DNS-01 solver) so that
// its failure to present a challenge, or to see it published (Wait: the
// DNS records' propagation), ends the order like the CA's refusal: the
// name backs off (fail_backoff_minutes) instead of being ordered again at
// every handshake, each order costing one at the CA. A failure because
// the order's context ended (issue_timeout, an unloaded config) is not
// counted.
func WatchSolver(s acmez.Solver) acmez.Solver { return watchedSolver{s} }

type watchedSolver struct{ acmez.Solver }

// Present implements acmez.Solver.
func (s watchedSolver) Present(ctx context.Context, chal acme.Challenge) error {
	err := s.Solver.Present(ctx, chal)
	noteSolverFailure(ctx, chal, "presenting", err)
	return err
}

// Wait implements acmez.Waiter: the wrapped solver's Wait, if it has one.
func (s watchedSolver) Wait(ctx context.Context, chal acme.Challenge) error {
	w, ok := s.Solver.(acmez.Waiter)
	if !ok {
		return nil
	}
	err := w.Wait(ctx, chal)
	noteSolverFailure(ctx, chal, "waiting for the publication of", err)
	return err
}

// noteSolverFailure records err of a solver's step as the refusal of the
// order that ctx carries the verdict of.
func noteSolverFailure(ctx context.Context, chal acme.Challenge, step string, err error) {
	if err == nil || ctx.Err() != nil {
		return
	}
	o, ok := ctx.Value(verdictKey{}).(*orderVerdict)
	if !ok {
		return
	}
	v := o.current() // the CA whose challenge it is
	if v == nil {
		return
	}
	what := chal.Identifier.Value
	if chal.Type == acme.ChallengeTypeDNS01 {
		what = chal.DNS01TXTRecordName() // the record the provider writes
	}
	v.noteRefused(fmt.Sprintf("%s challenge: %s %s: %v", chal.Type, step, what, err))
}

// Interface guards
var (
	_ acmez.Solver = watchedSolver{}
	_ acmez.Waiter = watchedSolver{}
)
