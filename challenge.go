package caddyacme

import (
	"net"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(Challenge{})
	httpcaddyfile.RegisterHandlerDirective("acme_challenge", parseChallenge)
	httpcaddyfile.RegisterDirectiveOrder("acme_challenge", httpcaddyfile.Before, "tracing")
}

// Challenge answers the CA's HTTP-01 challenge requests
// (`/.well-known/acme-challenge/<token>`) for the acme app, including
// challenges another node started and only the shared storage knows. Caddy
// itself answers the challenges of this process; this handler makes any node
// answer, so a load balancer may send the CA anywhere. Any other request, and
// a challenge for a name the app does not allow or a token it does not know,
// goes to the next handler.
//
// Unlike Kong, no dummy route is needed and a redirect after it does not
// break validation: the Caddyfile directive is ordered before every other
// handler.
//
// Caddyfile:
//
//	acme_challenge
type Challenge struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (Challenge) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.acme_challenge",
		New: func() caddy.Module { return new(Challenge) },
	}
}

// Provision finds the acme app.
func (c *Challenge) Provision(ctx caddy.Context) error {
	app, err := configuredApp(ctx)
	if err != nil {
		return err
	}
	c.app = app
	return nil
}

// ServeHTTP answers a challenge the app's issuer knows, else calls next.
func (c Challenge) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !certmagic.LooksLikeHTTPChallenge(r) || c.app.rt.Allowed(requestHost(r)) != nil {
		return next.ServeHTTP(w, r)
	}
	if c.app.issuer.HandleHTTPChallenge(w, r) {
		return nil
	}
	return next.ServeHTTP(w, r)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	acme_challenge
func (c *Challenge) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("acme_challenge takes no block: configure it in the global acme option")
	}
	return nil
}

func parseChallenge(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	c := new(Challenge)
	err := c.UnmarshalCaddyfile(h.Dispenser)
	return c, err
}

// requestHost is the request's host name, lowercased, without port or
// trailing dot.
func requestHost(r *http.Request) string {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Challenge)(nil)
	_ caddy.Provisioner           = (*Challenge)(nil)
	_ caddyfile.Unmarshaler       = (*Challenge)(nil)
)
