package caddyacme

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(Manager{})
}

// Manager is the certificate manager through which Caddy's TLS app gets
// certificates from the acme app. For a name the app does not allow it
// returns an error rather than nothing, so that no issuer of the same TLS
// automation policy can issue a certificate for that name instead.
//
// Caddyfile:
//
//	tls {
//		get_certificate acme
//	}
type Manager struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (Manager) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.get_certificate.acme",
		New: func() caddy.Module { return new(Manager) },
	}
}

// Provision finds the acme app.
func (m *Manager) Provision(ctx caddy.Context) error {
	app, err := configuredApp(ctx)
	if err != nil {
		return err
	}
	m.app = app
	return nil
}

// GetCertificate returns the certificate for the ClientHello, obtaining it
// if needed, or an error if the name is not allowed or none can be had.
func (m Manager) GetCertificate(ctx context.Context, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return m.app.rt.Certificate(ctx, hello)
}

// UnmarshalCaddyfile sets up the manager from Caddyfile tokens. Syntax:
//
//	get_certificate acme
func (m *Manager) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume manager name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("get_certificate acme takes no block: configure it in the global acme option")
	}
	return nil
}

// configuredApp returns the acme app of the config being loaded, or an error
// that says how to add it.
func configuredApp(ctx caddy.Context) (*App, error) {
	app, err := ctx.AppIfConfigured("acme")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil, errors.New(`the acme app is not configured: add an "acme" app to the config (in a Caddyfile, the global option acme { account_email … })`)
	}
	if err != nil {
		return nil, fmt.Errorf("getting the acme app: %w", err)
	}
	return app.(*App), nil
}

// Interface guards
var (
	_ certmagic.Manager     = (*Manager)(nil)
	_ caddy.Provisioner     = (*Manager)(nil)
	_ caddyfile.Unmarshaler = (*Manager)(nil)
)
