package caddyacme

import (
	"context"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// The app's certmagic configuration reports what it does as events, with
// certmagic's names and data (the ones Caddy's tls app emits for its own
// certificates): cert_obtaining, cert_obtained, cert_failed (each with
// "identifier" and "renewal"), cached_managed_cert ("sans"). onEvent hands
// them to the runtime (which times orders and renewals, takes the CA's
// verdict and notes the names cached), then to Caddy's events app with the
// acme app as their origin, so that `events { on cert_obtained … }`
// subscriptions see the app's certificates too. The app adds events of
// its own: eventBackoffDenied and eventBudgetDenied.

// eventBackoffDenied is emitted when a TLS handshake is refused because its
// name is in backoff after a failed order. Data: "identifier" (the name)
// and "error" (Kong's message, with the seconds left).
const eventBackoffDenied = "cert_backoff_denied"

// eventBudgetDenied is emitted when a handshake or order is refused
// because its registered domain has had its budget of new certificates
// (domain_budget). Data: "identifier" (the name) and "error" (naming the
// domain, the budget and when the next certificate may be ordered).
const eventBudgetDenied = "cert_budget_denied"

// provisionEvents finds Caddy's events app, loading it if the config has
// none, as Caddy's tls app does.
func (a *App) provisionEvents(ctx caddy.Context) error {
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

// onEvent is the certmagic configuration's OnEvent: it hands the event to
// the runtime and emits it through Caddy's events app. A subscriber's
// abort of cert_obtaining cancels that order, as in the tls app.
func (a *App) onEvent(ctx context.Context, name string, data map[string]any) error {
	a.rt.HandleEvent(ctx, name, data)
	if a.events == nil || !a.events.ShouldEmit(name) {
		return nil
	}
	evt := a.events.Emit(a.ctx, name, data)
	if evt.Aborted != nil && name == "cert_obtaining" {
		a.rt.IssuanceAborted(data)
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

// backoffDenied emits eventBackoffDenied for a handshake for name refused
// by the backoff (the runtime counts it).
func (a *App) backoffDenied(name string, err error) {
	if a.events != nil && a.events.ShouldEmit(eventBackoffDenied) {
		a.events.Emit(a.ctx, eventBackoffDenied, map[string]any{"identifier": name, "error": err})
	}
}

// budgetDenied emits eventBudgetDenied for name, refused by the budget of
// its registered domain (the runtime counts it).
func (a *App) budgetDenied(name string, err error) {
	if a.events != nil && a.events.ShouldEmit(eventBudgetDenied) {
		a.events.Emit(a.ctx, eventBudgetDenied, map[string]any{"identifier": name, "error": err})
	}
}
