package vault

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// UnmarshalCaddyfile sets up the storage from Caddyfile tokens; the syntax
// is in Storage's documentation. Every subdirective takes exactly the
// arguments shown and may appear once. It parses only: Provision checks
// the values.
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the module name
	if d.NextArg() {
		return d.ArgErr()
	}
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
	seen := make(backend.Seen)
	for d.NextBlock(0) {
		if err := seen.Once(d); err != nil {
			return err
		}
		var err error
		switch p, ok := strField[d.Val()]; {
		case ok:
			*p, err = backend.OneArg(d)
		case d.Val() == "timeout":
			s.Timeout, err = backend.OneDuration(d)
		default:
			err = backend.UnmarshalShared(d, &s.Options, &s.TLS)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Storage)(nil)
