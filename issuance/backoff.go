package issuance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"time"

	"go.uber.org/zap"
)

// backoff is what storage holds at BackoffKey(name) after the CA refused
// an order.
type backoff struct {
	Host  string    `json:"host"`
	Until time.Time `json:"until"`
	Error string    `json:"error"`
}

// BackoffError is the error for a name in backoff after the CA refused
// it, with Kong's message (as opposed to a storage error reading the
// backoff).
type BackoffError string

func (e BackoffError) Error() string { return string(e) }

// checkBackoff returns a BackoffError if name is in backoff after a failed
// order, on this node or any other sharing the storage.
func (r *Runtime) checkBackoff(ctx context.Context, name string) error {
	data, err := r.storage.Load(ctx, BackoffKey(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading backoff of %s: %w", name, err)
	}
	var b backoff
	if err := json.Unmarshal(data, &b); err != nil {
		// written by someone else; an unreadable backoff must not block issuance forever
		r.logger.Warn("ignoring unreadable backoff record",
			zap.String("identifier", name),
			zap.String("key", BackoffKey(name)),
			zap.Error(err))
		return nil
	}
	if left := time.Until(b.Until); left > 0 {
		return BackoffError(fmt.Sprintf("please try again in %d seconds for host %s because of previous failure; this is configurable with fail_backoff_minutes",
			int(math.Ceil(left.Seconds())), name))
	}
	return nil
}

// setBackoff records that the CA refused an order of name, so that no
// node orders it again for FailBackoff.
func (r *Runtime) setBackoff(name string, cause error) {
	d := r.opts.FailBackoff
	if d <= 0 {
		return
	}
	data, err := json.Marshal(backoff{Host: name, Until: time.Now().Add(d).UTC(), Error: cause.Error()})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 30*time.Second)
		defer cancel()
		err = r.storage.Store(ctx, BackoffKey(name), data)
	}
	if err != nil {
		r.logger.Error("recording backoff after failed order",
			zap.String("identifier", name),
			zap.Error(err))
		return
	}
	r.logger.Warn("certificate order failed; backing off",
		zap.String("identifier", name),
		zap.Duration("backoff", d),
		zap.Error(cause))
}
