package caddyacme

import (
	"context"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/appconfig"
)

// accountSetup makes sure, before the app's orders, that the CA knows the
// configured account (account_key): certmagic only looks a configured
// key up, so a key the CA has never seen would fail every order.
type accountSetup struct {
	issuer *certmagic.ACMEIssuer
	set    *appconfig.Settings

	// sem (one slot) lets one order prepare the account at a time, so
	// that a burst of orders registers it once, while the others still
	// honour their context; done is read and set holding it
	sem  chan struct{}
	done bool
}

// newAccountSetup returns the account setup of the app's issuer and
// settings.
func newAccountSetup(issuer *certmagic.ACMEIssuer, set *appconfig.Settings) *accountSetup {
	return &accountSetup{issuer: issuer, set: set, sem: make(chan struct{}, 1)}
}

// prepareOrder runs before every order (issuance.Options.PrepareOrder):
// the first time, and after every failure, it makes sure the CA knows the
// account of account_key and storage holds it, registering it if the CA
// does not know it (see appconfig.PrepareAccount); once that succeeded it
// does nothing. Without account_key it does nothing.
func (s *accountSetup) prepareOrder(ctx context.Context) error {
	if s.set.AccountKey == "" {
		return nil
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.sem }()
	if s.done {
		return nil
	}
	if err := appconfig.PrepareAccount(ctx, s.issuer, s.set); err != nil {
		return err
	}
	s.done = true
	return nil
}
