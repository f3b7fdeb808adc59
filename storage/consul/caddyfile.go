package consul

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// UnmarshalCaddyfile sets up the storage from Caddyfile tokens (syntax in
// the type's doc comment). Every subdirective takes exactly the arguments
// shown and may appear once.
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		key := d.Val()
		if seen[key] {
			return d.Errf("duplicate subdirective '%s'", key)
		}
		seen[key] = true
		switch key {
		case "address", "scheme", "token", "datacenter", "namespace", "partition", "key_prefix", "timeout":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			switch key {
			case "address":
				s.Address = v
			case "scheme":
				if v != "http" && v != "https" {
					return d.Errf("scheme: want http or https, got %q", v)
				}
				s.Scheme = v
			case "token":
				s.Token = v
			case "datacenter":
				s.Datacenter = v
			case "namespace":
				s.Namespace = v
			case "partition":
				s.Partition = v
			case "key_prefix":
				s.KeyPrefix = v
			case "timeout":
				dur, err := caddy.ParseDuration(v)
				if err != nil || dur <= 0 {
					return d.Errf("timeout: expected a positive duration such as 10s, got %q", v)
				}
				s.Timeout = caddy.Duration(dur)
			}
		case "tls":
			s.TLS = new(backend.TLS)
			if err := s.TLS.UnmarshalCaddyfile(d); err != nil {
				return err
			}
		default:
			known, err := s.Options.UnmarshalCaddyfile(d)
			if err != nil {
				return err
			}
			if !known {
				return d.Errf("unrecognized subdirective '%s'", key)
			}
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Storage)(nil)
