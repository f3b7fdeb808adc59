package vault

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// UnmarshalCaddyfile sets up the storage from Caddyfile tokens; the syntax
// is in Storage's documentation. Every subdirective takes exactly the
// arguments shown and may appear once.
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the module name
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

		strField := map[string]*string{
			"address":     &s.Address,
			"mount":       &s.Mount,
			"path_prefix": &s.PathPrefix,
			"lock_prefix": &s.LockPrefix,
			"namespace":   &s.Namespace,
			"auth_method": &s.AuthMethod,
			"token":       &s.Token,
			"token_file":  &s.TokenFile,
			"role":        &s.Role,
			"jwt_path":    &s.JWTPath,
			"auth_mount":  &s.AuthMount,
			"role_id":     &s.RoleID,
			"secret_id":   &s.SecretID,
		}
		if p, ok := strField[key]; ok {
			v, err := backend.OneArg(d)
			if err != nil {
				return err
			}
			*p = v
			continue
		}
		switch key {
		case "timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("timeout: expected a positive duration such as 10s, got %q", d.Val())
			}
			s.Timeout = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
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

// Interface guard
var _ caddyfile.Unmarshaler = (*Storage)(nil)
