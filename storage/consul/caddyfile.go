package consul

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
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
			if d.NextArg() {
				return d.ArgErr()
			}
			s.TLS = new(TLS)
			if err := s.TLS.unmarshalCaddyfile(d); err != nil {
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

// unmarshalCaddyfile reads the tls block.
func (t *TLS) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		if seen[key] {
			return d.Errf("duplicate tls subdirective '%s'", key)
		}
		seen[key] = true
		switch key {
		case "insecure_skip_verify":
			if d.NextArg() {
				return d.ArgErr()
			}
			t.InsecureSkipVerify = true
		case "ca_file", "server_name", "cert_file", "key_file":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			switch key {
			case "ca_file":
				t.CAFile = v
			case "server_name":
				t.ServerName = v
			case "cert_file":
				t.CertFile = v
			case "key_file":
				t.KeyFile = v
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", key)
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Storage)(nil)
