// Package kongcompat is caddy-acme's way out of Kong: the `kong` Caddy
// config adapter, which turns the configuration of Kong's acme plugin
// into a complete Caddy JSON config for caddy-acme.
//
//	caddy adapt --adapter kong --config kong.yml
//	caddy run   --adapter kong --config kong.yml
//
// The input is a Kong declarative file (`_format_version`, YAML or JSON,
// as decK or `kong config db_export` write it), an acme plugin object as
// Kong's Admin API returns it (GET /plugins/{id}), or the Admin API's
// plugin list (GET /plugins). The output has the `acme` app with the
// plugin's values, the storage module that matches `storage` and
// `storage_config`, and the site wiring of caddy-acme's design: a
// catch-all HTTPS server whose certificates come from the acme app
// (get_certificate acme), and an HTTP server that answers HTTP-01
// challenges (acme_challenge) and redirects everything else to HTTPS.
//
// The plugin is validated as Kong validates it, with Kong's messages
// ("schema violation (config.account_email: invalid value: notaemail)").
// Every place where caddy-acme deliberately behaves differently from Kong
// is reported as a warning, and what caddy-acme cannot do (Redis cloud
// authentication, vaults other than Kong's env vault) is refused with a
// message saying so. Other plugins and Kong entities in the file are
// ignored, with one warning listing them: this adapter migrates the acme
// plugin, not a gateway.
//
// `kong` storage takes its PostgreSQL connection from kong.conf's pg_*
// properties: give the file's path in the KONG_CONF environment variable
// (or the kong_conf adapter option); Kong's KONG_PG_* environment
// overrides apply as in Kong. The adapter never reads a kong.conf it was
// not given.
//
// The package also registers the `caddy acme-migrate` command (see
// Migrate), which copies the data Kong's plugin stored — the ACME account
// key and every host's certificate and key, from Redis, Consul, Vault,
// Kong's acme_storage table or, in database mode, Kong's certificates and
// snis tables — into the acme app's storage in certmagic's layout.
package kongcompat

import (
	"os"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

func init() {
	caddyconfig.RegisterAdapter("kong", Adapter{})
}

// Adapter adapts a Kong configuration holding the acme plugin to Caddy
// JSON. Options (the map passed to Adapt):
//
//   - "filename" (string): the input's name, used in messages (Caddy's
//     commands set it);
//   - "kong_conf" (string): the path of Kong's kong.conf, for the
//     deployment mode (database, role), the PostgreSQL connection of
//     `kong` storage and lua_ssl_trusted_certificate. Default: the
//     KONG_CONF environment variable; else no kong.conf is read.
//
// Environment variables read: KONG_CONF; Kong's overrides KONG_DATABASE,
// KONG_ROLE, KONG_PG_* (KONG_PG_PASSWORD becomes the placeholder
// {env.KONG_PG_PASSWORD} and KONG_PG_PASSWORD_FILE the placeholder
// {file.<path>}, so the password is not written into the output) and
// KONG_LUA_SSL_TRUSTED_CERTIFICATE; and the DECK_* variables named by
// decK templates (${{ env "DECK_NAME" }}) in the plugin's configuration.
type Adapter struct {
	// LookupEnv reads an environment variable. Default: os.LookupEnv.
	LookupEnv func(name string) (string, bool)
}

// Adapt converts body. The warnings list every difference from Kong's
// behaviour that the config carries; secrets never appear in them or in
// the error.
func (a Adapter) Adapt(body []byte, options map[string]any) ([]byte, []caddyconfig.Warning, error) {
	lookup := a.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	c := &converter{env: lookup}
	c.file, _ = options["filename"].(string)
	conf, _ := options["kong_conf"].(string)
	if conf == "" {
		conf, _ = lookup("KONG_CONF")
	}
	out, err := c.convert(body, conf)
	if err != nil {
		return nil, c.warnings, err
	}
	return out, c.warnings, nil
}

// Interface guards
var _ caddyconfig.Adapter = Adapter{}
