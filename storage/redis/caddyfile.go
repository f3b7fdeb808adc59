package redis

import (
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
// bare `tls` (without a block) turns TLS on with the defaults. It parses
// only: Provision checks the values.
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	seen := make(backend.Seen)
	if args := d.RemainingArgs(); len(args) > 0 {
		s.Addresses = args
		seen["addresses"] = true
	}
	for d.NextBlock(0) {
		if err := seen.Once(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "addresses":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			s.Addresses = args
		case "master_name":
			s.MasterName, err = backend.OneArg(d)
		case "username":
			s.Username, err = backend.OneArg(d)
		case "password":
			s.Password, err = backend.OneArg(d)
		case "sentinel_username":
			s.SentinelUsername, err = backend.OneArg(d)
		case "sentinel_password":
			s.SentinelPassword, err = backend.OneArg(d)
		case "key_prefix":
			s.KeyPrefix, err = backend.OneArg(d)
		case "cluster":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.Cluster = true
		case "db":
			s.DB, err = backend.OneInt(d, "a database number", false)
		case "dial_timeout":
			s.DialTimeout, err = backend.OneDuration(d)
		case "read_timeout":
			s.ReadTimeout, err = backend.OneDuration(d)
		case "write_timeout":
			s.WriteTimeout, err = backend.OneDuration(d)
		default:
			err = backend.UnmarshalShared(d, &s.Options, &s.TLS)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Storage)(nil)
