package backend

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/acmekit/caddy-acme/internal/placeholder"
)

// Options are the fields every caddy-acme storage module has. Modules embed
// it, so its fields appear among theirs in JSON and in the Caddyfile.
type Options struct {
	// A 32-byte AES-256-GCM key, base64 or hex encoded, to encrypt every
	// value at rest. The storage key is authenticated with the value, so a
	// value copied under another key does not decrypt. A wrong key or a
	// tampered value is an error, never garbage. A secret: use
	// {env.NAME} or {file./path}. Default: values are stored as given.
	EncryptionKey string `json:"encryption_key,omitempty"`

	// How long a lock stays held without being refreshed: a node that
	// crashes while holding a lock loses it after at most this long, and
	// another node takes it over. Default: 30s.
	LockLease caddy.Duration `json:"lock_lease,omitempty"`

	// How often a held lock's lease is refreshed. Must be shorter than
	// lock_lease. Default: a third of lock_lease.
	LockRefresh caddy.Duration `json:"lock_refresh,omitempty"`
}

// Runtime is Options checked and expanded.
type Runtime struct {
	Sealer  *Sealer // nil: no encryption
	Lease   time.Duration
	Refresh time.Duration
}

// DefaultLockLease is the lock lease when lock_lease is not set.
const DefaultLockLease = 30 * time.Second

// Provision checks the options and expands placeholders. Errors name the
// field and never contain the encryption key.
func (o Options) Provision() (Runtime, error) {
	var rt Runtime
	if o.EncryptionKey != "" {
		raw, err := placeholder.ExpandSecret("encryption_key", o.EncryptionKey)
		if err != nil {
			return rt, err
		}
		key, err := ParseKey(raw)
		if err != nil {
			return rt, fmt.Errorf("encryption_key: %w", err)
		}
		if rt.Sealer, err = NewSealer(key); err != nil {
			return rt, fmt.Errorf("encryption_key: %w", err)
		}
	}
	rt.Lease = time.Duration(o.LockLease)
	if rt.Lease == 0 {
		rt.Lease = DefaultLockLease
	}
	if rt.Lease < 0 {
		return rt, fmt.Errorf("lock_lease: must be positive, got %s", rt.Lease)
	}
	rt.Refresh = time.Duration(o.LockRefresh)
	if rt.Refresh == 0 {
		rt.Refresh = rt.Lease / 3
	}
	if rt.Refresh <= 0 || rt.Refresh >= rt.Lease {
		return rt, fmt.Errorf("lock_refresh: must be positive and shorter than lock_lease (%s), got %s", rt.Lease, rt.Refresh)
	}
	return rt, nil
}

// UnmarshalCaddyfile handles the subdirectives of Options at the
// dispenser's current token; it reports whether it knew the keyword. It
// parses only: Provision checks the values.
//
//	encryption_key <key>
//	lock_lease <duration>
//	lock_refresh <duration>
func (o *Options) UnmarshalCaddyfile(d *caddyfile.Dispenser) (bool, error) {
	var err error
	switch d.Val() {
	case "encryption_key":
		o.EncryptionKey, err = OneArg(d)
	case "lock_lease":
		o.LockLease, err = OneDuration(d)
	case "lock_refresh":
		o.LockRefresh, err = OneDuration(d)
	default:
		return false, nil
	}
	return true, err
}
