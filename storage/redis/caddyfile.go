package redis

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// UnmarshalCaddyfile sets up the storage from Caddyfile tokens. Syntax:
//
//	storage acme_redis [<address>...] {
//		addresses <address>...
//		master_name <name>
//		cluster
//		username <username>
//		password <password>
//		sentinel_username <username>
//		sentinel_password <password>
//		db <number>
//		key_prefix <prefix>
//		dial_timeout <duration>
//		read_timeout <duration>
//		write_timeout <duration>
//		tls {
//			enabled <true|false>
//			ca_file <path>
//			server_name <name>
//			insecure_skip_verify
//			cert_file <path>
//			key_file <path>
//		}
//		encryption_key <key>
//		lock_lease <duration>
//		lock_refresh <duration>
//	}
//
// Addresses may be given on the first line instead of with addresses. A
// bare `tls` (without a block) turns TLS on with the defaults.
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	seen := make(map[string]bool)
	if args := d.RemainingArgs(); len(args) > 0 {
		s.Addresses = args
		seen["addresses"] = true
	}
	for d.NextBlock(0) {
		key := d.Val()
		if seen[key] {
			return d.Errf("%s specified more than once", key)
		}
		seen[key] = true
		if ok, err := s.Options.UnmarshalCaddyfile(d); ok || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		switch key {
		case "addresses":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			s.Addresses = args
		case "master_name", "username", "password", "sentinel_username", "sentinel_password", "key_prefix":
			val, err := backend.OneArg(d)
			if err != nil {
				return err
			}
			*map[string]*string{
				"master_name":       &s.MasterName,
				"username":          &s.Username,
				"password":          &s.Password,
				"sentinel_username": &s.SentinelUsername,
				"sentinel_password": &s.SentinelPassword,
				"key_prefix":        &s.KeyPrefix,
			}[key] = val
		case "cluster":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.Cluster = true
		case "db":
			val, err := backend.OneArg(d)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return d.Errf("db: expected a database number (0 or more), got %q", val)
			}
			s.DB = n
		case "dial_timeout", "read_timeout", "write_timeout":
			val, err := backend.OneArg(d)
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 {
				return d.Errf("%s: expected a positive duration such as 5s, got %q", key, val)
			}
			*map[string]*caddy.Duration{
				"dial_timeout":  &s.DialTimeout,
				"read_timeout":  &s.ReadTimeout,
				"write_timeout": &s.WriteTimeout,
			}[key] = caddy.Duration(dur)
		case "tls":
			s.TLS = new(backend.TLS)
			if err := s.TLS.UnmarshalCaddyfile(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", key)
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Storage)(nil)
