package issuance

import "context"

// The checks usableCAs makes in one batch, one CA and one name at a time
// with plain Loads: what the backoff and rate-limit tests drive.

// checkBackoff returns a BackoffError if name is in backoff at the CA
// after a failed order, on this node or any other sharing the storage. The
// record is read against the current FailBackoff: lowering it (or 0)
// takes effect at once.
func (r *Runtime) checkBackoff(ctx context.Context, ca *caState, name string) error {
	if r.opts.FailBackoff <= 0 {
		return nil
	}
	key := BackoffKey(ca.key, name)
	data, err := r.storage.Load(ctx, key)
	return r.backoffVerdict(name, key, data, err)
}

// checkRateLimit returns a PauseError while name's registered domain or
// the account is rate limited by the CA.
func (r *Runtime) checkRateLimit(ctx context.Context, ca *caState, name string) error {
	for _, scope := range rateLimitScopes(name) {
		data, err := r.storage.Load(ctx, RateLimitKey(ca.key, scope))
		if err := r.rateLimitVerdict(ca, name, scope, data, err); err != nil {
			return err
		}
	}
	return nil
}
