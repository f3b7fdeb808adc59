package caddyacme

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"github.com/acmekit/caddy-acme/internal/appconfig"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("acme", parseGlobalOption)
}

// parseGlobalOption sets up the acme app from the Caddyfile global option.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the acme global option may appear only once")
	}
	app := new(App)
	var line int
	if d.Next() {
		line = d.Line()
		d.Prev()
	}
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	// the checks Provision makes, so that `caddy adapt` reports a bad
	// value too, with the same message as a JSON config
	if err := app.CheckFields(); err != nil {
		return nil, fmt.Errorf("%s:%d: acme: %w", d.File(), line, err)
	}
	return httpcaddyfile.App{
		Name:  "acme",
		Value: caddyconfig.JSON(app, nil),
	}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens. Keywords are the
// JSON field names. It only parses: the values are checked when the config
// is loaded (Provision), so that a Caddyfile, JSON and the kong adapter get
// the same message for the same value. Syntax:
//
//	acme {
//		account_email <email>
//		api_uri <directory_url>
//		tos_accepted [true|false]
//		eab <kid> <hmac_key>
//		eab_kid <kid>
//		eab_hmac_key <hmac_key>
//		cert_type rsa|ecc
//		rsa_key_size 2048|3072|4096
//		renew_threshold_days <days>
//		disable_ari [true|false]
//		renew_interval <duration>
//		renew_first_delay <duration>
//		cache_sync_interval <duration>
//		domains <name...>
//		allow_any_domain [true|false]
//		fail_backoff_minutes <minutes>
//		preferred_chain <root_common_name>
//		enable_ipv4_common_name [true|false]
//		storage <module> {
//			...
//		}
//		account_key <pem>
//		trusted_roots <pem_file...>
//		http_port <port>
//		issue_timeout <duration>
//		cache_capacity <count>
//		permission <module> [...]
//		ask <endpoint>
//		max_pending_orders <count>
//		domain_budget <count>
//		domain_budget_window <duration>
//		dns <provider> [...]
//		propagation_delay <duration>
//		propagation_timeout <duration>|-1
//		resolvers <address...>
//		dns_ttl <duration>
//		dns_challenge_override_domain <domain>
//		disable_http_challenge
//		disable_tlsalpn_challenge
//		alt_tlsalpn_port <port>
//		distributed false
//		wildcard_certificates [true|false]
//		profile <name>
//		enable_ipv6 [true|false]
//		fallback <api_uri> {
//			tos_accepted [true|false]
//			eab <kid> <hmac_key>
//			eab_kid <kid>
//			eab_hmac_key <hmac_key>
//			trusted_roots <pem_file...>
//			preferred_chain <root_common_name>
//			profile <name>
//		}
//	}
//
// permission takes any tls.permission module as Caddy's on_demand_tls
// does (e.g. `permission http <url>`); `ask <endpoint>` is
// short for `permission http <endpoint>`. Only one of them may be given.
//
// The challenge subdirectives (from dns to distributed) are Caddy's own
// acme_issuer words, parsed by Caddy's parser into the challenges field:
// `dns <provider> …` takes any dns.providers module; TLS-ALPN-01 is
// turned on by disable_http_challenge (no port 80) or alt_tlsalpn_port.
//
// fallback adds a further CA each time it is given, in order; its block
// takes the words of the top-level fields of the same names.
//
// domains and trusted_roots may be repeated; their values add up. Any other
// subdirective may appear once.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	var challenges caddytls.ACMEIssuer // Caddy's parser of the challenge words
	for d.NextBlock(0) {
		key := d.Val()
		if seen[key] && key != "domains" && key != "trusted_roots" && key != "fallback" {
			return d.Errf("duplicate subdirective '%s'", key)
		}
		seen[key] = true

		var err error
		switch key {
		case "account_email":
			err = oneString(d, &a.AccountEmail)
		case "api_uri":
			err = oneString(d, &a.APIURI)
		case "tos_accepted":
			err = flag(d, &a.TOSAccepted)
		case "eab":
			if seen["eab_kid"] || seen["eab_hmac_key"] {
				return d.Err("eab sets eab_kid and eab_hmac_key: give either eab or those two")
			}
			if !d.Args(&a.EABKID, &a.EABHMACKey) || d.NextArg() {
				return d.ArgErr()
			}
		case "eab_kid":
			if seen["eab"] {
				return d.Err("eab sets eab_kid and eab_hmac_key: give either eab or those two")
			}
			err = oneString(d, &a.EABKID)
		case "eab_hmac_key":
			if seen["eab"] {
				return d.Err("eab sets eab_kid and eab_hmac_key: give either eab or those two")
			}
			err = oneString(d, &a.EABHMACKey)
		case "cert_type":
			err = oneString(d, &a.CertType)
		case "rsa_key_size":
			err = oneInt(d, &a.RSAKeySize)
		case "renew_threshold_days":
			a.RenewThresholdDays, err = oneNumber(d)
		case "domains":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			a.Domains = append(a.Domains, args...)
		case "allow_any_domain":
			err = flag(d, &a.AllowAnyDomain)
		case "fail_backoff_minutes":
			a.FailBackoffMinutes, err = oneNumber(d)
		case "preferred_chain":
			err = oneString(d, &a.PreferredChain)
		case "enable_ipv4_common_name":
			var on bool
			if err = flag(d, &on); err == nil {
				a.EnableIPv4CommonName = &on
			}
		case "storage":
			var name string
			if !d.NextArg() {
				return d.ArgErr()
			}
			name = d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "caddy.storage."+name)
			if err != nil {
				return err
			}
			a.StorageRaw = caddyconfig.JSONModuleObject(unm, "module", name, nil)
		case "account_key":
			err = oneString(d, &a.AccountKey)
		case "trusted_roots":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			a.TrustedRoots = append(a.TrustedRoots, args...)
		case "http_port":
			err = oneInt(d, &a.HTTPPort)
		case "issue_timeout":
			err = oneDuration(d, &a.IssueTimeout)
		case "renew_interval":
			err = oneDuration(d, &a.RenewInterval)
		case "renew_first_delay":
			err = oneDuration(d, &a.RenewFirstDelay)
		case "cache_sync_interval":
			err = oneDuration(d, &a.CacheSyncInterval)
		case "disable_ari":
			err = flag(d, &a.DisableARI)
		case "cache_capacity":
			err = oneInt(d, &a.CacheCapacity)
		case "permission", "ask":
			if a.PermissionRaw != nil {
				return d.Err("permission (or ask) already specified: give one permission module")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			if key == "ask" {
				perm := caddytls.PermissionByHTTP{Endpoint: d.Val()}
				if d.NextArg() {
					return d.ArgErr()
				}
				a.PermissionRaw = caddyconfig.JSONModuleObject(perm, "module", "http", nil)
				break
			}
			name := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "tls.permission."+name)
			if err != nil {
				return err
			}
			if _, ok := unm.(caddytls.OnDemandPermission); !ok {
				return d.Errf("module tls.permission.%s (%T) is not a permission module", name, unm)
			}
			a.PermissionRaw = caddyconfig.JSONModuleObject(unm, "module", name, nil)
		case "max_pending_orders":
			err = oneInt(d, &a.MaxPendingOrders)
		case "domain_budget":
			var n int
			if err = oneInt(d, &n); err == nil {
				a.DomainBudget = &n
			}
		case "domain_budget_window":
			err = oneDuration(d, &a.DomainBudgetWindow)
		case "dns", "propagation_delay", "propagation_timeout", "resolvers", "dns_ttl",
			"dns_challenge_override_domain", "disable_http_challenge",
			"disable_tlsalpn_challenge", "alt_tlsalpn_port", "distributed":
			if err := caddyIssuerWord(d, &challenges); err != nil {
				return err
			}
			a.Challenges = challenges.Challenges
		case "wildcard_certificates":
			var on bool
			if err = flag(d, &on); err == nil {
				a.WildcardCertificates = &on
			}
		case "profile":
			err = oneString(d, &a.Profile)
		case "enable_ipv6":
			err = flag(d, &a.EnableIPv6)
		case "fallback":
			var ca appconfig.FallbackCA
			if ca, err = parseFallback(d); err == nil {
				a.Fallback = append(a.Fallback, ca)
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", key)
		}
		if err != nil {
			return d.WrapErr(err)
		}
	}
	return nil
}

// parseFallback reads one fallback CA: `fallback <api_uri> { … }`.
func parseFallback(d *caddyfile.Dispenser) (appconfig.FallbackCA, error) {
	var ca appconfig.FallbackCA
	if !d.NextArg() {
		return ca, d.Err("fallback: give the ACME directory URL of the fallback CA: fallback <api_uri> { … }")
	}
	ca.APIURI = d.Val()
	if d.NextArg() {
		return ca, d.ArgErr()
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		if seen[key] && key != "trusted_roots" {
			return ca, d.Errf("duplicate subdirective '%s'", key)
		}
		seen[key] = true
		var err error
		switch key {
		case "tos_accepted":
			err = flag(d, &ca.TOSAccepted)
		case "eab":
			if seen["eab_kid"] || seen["eab_hmac_key"] {
				return ca, d.Err("eab sets eab_kid and eab_hmac_key: give either eab or those two")
			}
			if !d.Args(&ca.EABKID, &ca.EABHMACKey) || d.NextArg() {
				return ca, d.ArgErr()
			}
		case "eab_kid", "eab_hmac_key":
			if seen["eab"] {
				return ca, d.Err("eab sets eab_kid and eab_hmac_key: give either eab or those two")
			}
			if key == "eab_kid" {
				err = oneString(d, &ca.EABKID)
			} else {
				err = oneString(d, &ca.EABHMACKey)
			}
		case "trusted_roots":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return ca, d.ArgErr()
			}
			ca.TrustedRoots = append(ca.TrustedRoots, args...)
		case "preferred_chain":
			err = oneString(d, &ca.PreferredChain)
		case "profile":
			err = oneString(d, &ca.Profile)
		default:
			return ca, d.Errf("fallback: unrecognized subdirective '%s'", key)
		}
		if err != nil {
			return ca, d.WrapErr(err)
		}
	}
	return ca, nil
}

// caddyIssuerWord parses the subdirective at d (its line and block) with
// Caddy's own acme_issuer parser, into iss, as if it were written inside
// `acme_issuer { … }`.
func caddyIssuerWord(d *caddyfile.Dispenser, iss *caddytls.ACMEIssuer) error {
	seg := d.NextSegment()
	first, last := seg[0], seg[len(seg)-1]
	tokens := make([]caddyfile.Token, 0, len(seg)+3)
	tokens = append(tokens,
		caddyfile.Token{File: first.File, Line: first.Line, Text: "acme_issuer"},
		caddyfile.Token{File: first.File, Line: first.Line, Text: "{"})
	tokens = append(tokens, seg...)
	tokens = append(tokens, caddyfile.Token{File: last.File, Line: last.Line + 1, Text: "}"})
	return iss.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
}

// oneString reads exactly one argument and no block.
func oneString(d *caddyfile.Dispenser, dst *string) error {
	key := d.Val()
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("%s takes no block", key)
	}
	return nil
}

// oneInt reads exactly one integer argument.
func oneInt(d *caddyfile.Dispenser, dst *int) error {
	key := d.Val()
	var s string
	if err := oneString(d, &s); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return d.Errf("%s: expected a whole number, got %q", key, s)
	}
	*dst = n
	return nil
}

// oneDuration reads exactly one duration (90s, 2m, 1d). A zero is
// refused: in JSON it is the field left out, the default, so it cannot
// be written down (its range is checked with the other fields',
// CheckFields, as in JSON).
func oneDuration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	key := d.Val()
	var s string
	if err := oneString(d, &s); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur == 0 {
		return d.Errf("%s: expected a positive duration such as 90s or 2m, got %q", key, s)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// oneNumber reads exactly one number. Its range (and NaN or an infinity)
// is checked with the other fields' (CheckFields), as in JSON.
func oneNumber(d *caddyfile.Dispenser) (*float64, error) {
	key := d.Val()
	var s string
	if err := oneString(d, &s); err != nil {
		return nil, err
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, d.Errf("%s: expected a number, got %q", key, s)
	}
	return &f, nil
}

// flag reads a boolean subdirective: the bare keyword means true, or it is
// followed by true or false.
func flag(d *caddyfile.Dispenser, dst *bool) error {
	key := d.Val()
	*dst = true
	if d.NextArg() {
		switch d.Val() {
		case "true":
		case "false":
			*dst = false
		default:
			return d.Errf("%s: expected true or false, got %q", key, d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*App)(nil)
