package caddyacme

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/acmekit/caddy-acme/admin"
)

// The App serves the admin API of package admin (admin.api.acme), which
// finds it at request time; importing admin registers that module. The
// operations are the runtime's; this file turns its answers into the
// admin API's.

// TriggerScan starts a renewal scan now, in the background.
func (a *App) TriggerScan() { a.rt.TriggerScan() }

// Order obtains host's certificate now, as POST /acme.
func (a *App) Order(ctx context.Context, host string) error { return a.rt.Order(ctx, host) }

// SanityCheck is POST /acme's test_http_challenge_flow: the HTTP-01 flow,
// so an error when the app does not use HTTP-01 (challenges).
func (a *App) SanityCheck(ctx context.Context, host string) error {
	if !a.set.HTTPChallenge {
		return errors.New("the app does not use the HTTP-01 challenge (challenges: dns, or http disabled): there is no HTTP flow to test")
	}
	return a.rt.SanityCheck(ctx, host)
}

// Hosts lists the names of the certificates in storage, sorted.
func (a *App) Hosts(ctx context.Context, fresh bool) ([]string, error) {
	return a.rt.Hosts(ctx, fresh)
}

// Certificate describes host's stored certificate.
func (a *App) Certificate(ctx context.Context, host string) (admin.CertInfo, error) {
	infos, errs := a.Certificates(ctx, []string{host})
	return infos[0], errs[0]
}

// Certificates describes hosts' stored certificates with Kong's fields,
// read in one batch.
func (a *App) Certificates(ctx context.Context, hosts []string) ([]admin.CertInfo, []error) {
	stored, errs := a.rt.Certificates(ctx, hosts)
	infos := make([]admin.CertInfo, len(hosts))
	now := time.Now()
	for i, s := range stored {
		if errs[i] != nil {
			continue
		}
		infos[i] = admin.NewCertInfo(s.Host, s.Leaf, now)
		infos[i].RenewAt, infos[i].RenewalDue, infos[i].LastRenewalError = s.RenewAt, s.RenewalDue, s.LastRenewalError
		infos[i].CA, infos[i].Profile = a.caOf(s.IssuerKey)
	}
	return infos, errs
}

// caOf returns the directory URL and profile of the app's CA whose issuer
// key is key (the primary CA or a fallback CA).
func (a *App) caOf(key string) (directory, profile string) {
	for i, iss := range a.magic.Issuers {
		if iss.IssuerKey() != key {
			continue
		}
		if i == 0 {
			return a.set.Directory, a.set.Profile
		}
		ca := a.set.Fallback[i-1]
		return ca.Directory, ca.Profile
	}
	return "", ""
}

// Delete removes host's certificate from storage and every node's memory.
func (a *App) Delete(ctx context.Context, host string, revoke bool) error {
	return a.rt.Delete(ctx, host, revoke)
}

// Status is the last renewal scan's status, with this node's next scan.
func (a *App) Status(ctx context.Context) (json.RawMessage, error) { return a.rt.Status(ctx) }

// ListDomains lists the domains added at run time, as GET /acme/domains.
func (a *App) ListDomains(ctx context.Context) ([]string, error) { return a.rt.Domains(ctx) }

// AddDomains adds entries to the domains added at run time, as POST
// /acme/domains.
func (a *App) AddDomains(ctx context.Context, entries []string) ([]string, error) {
	return a.rt.AddDomains(ctx, entries)
}

// RemoveDomain removes one entry of the domains added at run time, as
// DELETE /acme/domains/{entry}.
func (a *App) RemoveDomain(ctx context.Context, entry string) error {
	return a.rt.RemoveDomain(ctx, entry)
}

// Interface guards
var _ admin.App = (*App)(nil)
