package caddyacme

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// The app's certmagic configuration reports what it does as events, with
// certmagic's names and data (the ones Caddy's tls app emits for its own
// certificates): cert_obtaining, cert_obtained, cert_failed (each with
// "identifier" and "renewal"), cached_managed_cert ("sans"). onEvent counts
// and times orders and renewals and notes the names cached from them, then
// hands them to Caddy's events
// app with the acme app as their origin, so that `events { on cert_obtained
// … }` subscriptions see the app's certificates too. The app adds one event
// of its own, eventBackoffDenied.

// eventBackoffDenied is emitted when a TLS handshake is refused because its
// name is in backoff after a failed order. Data: "identifier" (the name)
// and "error" (Kong's message, with the seconds left).
const eventBackoffDenied = "cert_backoff_denied"

// provisionEvents sets up the issuance clock and finds Caddy's events app,
// loading it if the config has none, as Caddy's tls app does.
func (a *App) provisionEvents(ctx caddy.Context) error {
	a.issuing = &issuanceClock{started: make(map[issuanceKey]time.Time)}
	if ctx.Module() == nil {
		// provisioned by hand (tests, benchmarks), not by a config load:
		// there is no config whose apps could subscribe
		return nil
	}
	ev, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("getting events app: %w", err)
	}
	a.events = ev.(*caddyevents.App)
	return nil
}

// onEvent is the certmagic configuration's OnEvent: it records the metrics
// of orders and renewals and emits the event through Caddy's events app. A
// subscriber's abort of cert_obtaining cancels that order, as in the tls
// app.
func (a *App) onEvent(ctx context.Context, name string, data map[string]any) error {
	identifier, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	key := issuanceKey{identifier: identifier, renewal: renewal}
	switch name {
	case "cert_obtaining":
		a.issuing.start(key, time.Now())
	case "cert_obtained":
		a.issuing.stop(key, time.Now(), true)
		if renewal && identifier != "" {
			// by a scan, POST /acme or certmagic's maintenance: the other
			// nodes reload it (cachesync.go)
			a.publishChange(ctx, identifier, false)
		}
	case "cert_failed":
		a.issuing.stop(key, time.Now(), false)
		a.noteRefusal(identifier)
	case "cached_managed_cert":
		sans, _ := data["sans"].([]string)
		for _, name := range sans {
			a.noteCached(name)
		}
	}
	if a.events == nil || !a.events.ShouldEmit(name) {
		return nil
	}
	evt := a.events.Emit(a.ctx, name, data)
	if evt.Aborted != nil && name == "cert_obtaining" {
		a.issuing.forget(key)
	}
	return evt.Aborted
}

// shouldEmit is the certmagic configuration's ShouldEmitFunc: the events
// onEvent counts are always wanted, the others when Caddy's events app
// would deliver or log them.
func (a *App) shouldEmit(name string) bool {
	switch name {
	case "cert_obtaining", "cert_obtained", "cert_failed", "cached_managed_cert":
		return true
	}
	return a.events != nil && a.events.ShouldEmit(name)
}

// backoffDenied counts a handshake for name refused by the backoff, and
// emits eventBackoffDenied.
func (a *App) backoffDenied(name string, err error) {
	metrics.backoffDenials.Inc()
	if a.events != nil && a.events.ShouldEmit(eventBackoffDenied) {
		a.events.Emit(a.ctx, eventBackoffDenied, map[string]any{"identifier": name, "error": err})
	}
}

// issuanceKey identifies one order or renewal in progress.
type issuanceKey struct {
	identifier string
	renewal    bool
}

// issuanceClock times orders and renewals from cert_obtaining to
// cert_obtained or cert_failed. certmagic's issue lock lets one order or
// renewal per name run at a time, so the name and the kind identify it.
type issuanceClock struct {
	mu      sync.Mutex // protects started
	started map[issuanceKey]time.Time
}

// start records that key began at now. An attempt that ended without
// cert_obtained or cert_failed (it failed before reaching the CA, e.g.
// storing the result) leaves an entry behind; the next start for the same
// key replaces it, and the map is swept of entries older than any attempt
// can take when it grows large.
func (c *issuanceClock) start(key issuanceKey, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.started) >= maxPendingIssuances {
		for k, t := range c.started {
			if now.Sub(t) > staleIssuance {
				delete(c.started, k)
			}
		}
	}
	c.started[key] = now
}

// stop counts the end of key's attempt, and observes its duration if its
// start was seen.
func (c *issuanceClock) stop(key issuanceKey, now time.Time, success bool) {
	outcome := outcomeFailure
	if success {
		outcome = outcomeSuccess
	}
	kind, counter := "order", metrics.orders
	if key.renewal {
		kind, counter = "renewal", metrics.renewals
	}
	counter.WithLabelValues(outcome).Inc()

	c.mu.Lock()
	began, ok := c.started[key]
	delete(c.started, key)
	c.mu.Unlock()
	if ok {
		metrics.issuanceDuration.WithLabelValues(kind, outcome).Observe(now.Sub(began).Seconds())
	}
}

// forget drops key's start: the attempt was aborted.
func (c *issuanceClock) forget(key issuanceKey) {
	c.mu.Lock()
	delete(c.started, key)
	c.mu.Unlock()
}

const (
	// maxPendingIssuances is the size at which issuanceClock sweeps.
	maxPendingIssuances = 10000
	// staleIssuance is longer than any order or renewal attempt.
	staleIssuance = time.Hour
)
