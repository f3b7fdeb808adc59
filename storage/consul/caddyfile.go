package consul

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// UnmarshalCaddyfile sets up the storage from Caddyfile tokens (syntax in
// the type's doc comment). Every subdirective takes exactly the arguments
// shown and may appear once. It parses only: Provision checks the values.
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(backend.Seen)
	for d.NextBlock(0) {
		if err := seen.Once(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "address":
			s.Address, err = backend.OneArg(d)
		case "scheme":
			s.Scheme, err = backend.OneArg(d)
		case "token":
			s.Token, err = backend.OneArg(d)
		case "datacenter":
			s.Datacenter, err = backend.OneArg(d)
		case "namespace":
			s.Namespace, err = backend.OneArg(d)
		case "partition":
			s.Partition, err = backend.OneArg(d)
		case "key_prefix":
			s.KeyPrefix, err = backend.OneArg(d)
		case "timeout":
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

// Interface guards
var _ caddyfile.Unmarshaler = (*Storage)(nil)
