package backend

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The storage modules' Caddyfile unmarshalers parse only: syntax, arity,
// argument types, unknown and repeated subdirectives. Whether a value is
// in range is for Provision to say, once, so that a Caddyfile and a JSON
// config get the same message. The one exception is a zero where the
// field's zero value means "not set" (every duration, and kong's ports,
// pool_size and pg_timeout): the adapted JSON cannot hold it (omitempty),
// so `timeout 0` would silently become the default; the helpers below
// refuse it.

// Seen refuses a subdirective that appears twice in a block.
type Seen map[string]bool

// Once records the dispenser's current subdirective, or returns Caddy's
// error if the block has had it before.
func (s Seen) Once(d *caddyfile.Dispenser) error {
	key := d.Val()
	if s[key] {
		return d.Errf("duplicate subdirective '%s'", key)
	}
	s[key] = true
	return nil
}

// UnmarshalShared parses a subdirective every storage module has, at the
// dispenser's current token: those of Options and, where tls is not nil,
// tls (into a new *tls). Any other keyword is an error.
func UnmarshalShared(d *caddyfile.Dispenser, o *Options, tls **TLS) error {
	if d.Val() == "tls" && tls != nil {
		*tls = new(TLS)
		return (*tls).UnmarshalCaddyfile(d)
	}
	if known, err := o.UnmarshalCaddyfile(d); known || err != nil {
		return err
	}
	return d.Errf("unrecognized subdirective '%s'", d.Val())
}

// OneArg returns the single argument of the dispenser's current
// subdirective, or an argument-count error.
func OneArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	val := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return val, nil
}

// OneInt returns the single whole-number argument of the dispenser's
// current subdirective; want describes the value expected, for the
// error ("a port from 1 to 65535"). With nonZero, 0 is refused too (see
// above).
func OneInt(d *caddyfile.Dispenser, want string, nonZero bool) (int, error) {
	key := d.Val()
	val, err := OneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(val)
	if err != nil || (nonZero && n == 0) {
		return 0, d.Errf("%s: expected %s, got %q", key, want, val)
	}
	return n, nil
}

// OneDuration returns the single duration argument (10s, 1m, 1d) of the
// dispenser's current subdirective. 0 is refused (see above).
func OneDuration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	key := d.Val()
	val, err := OneArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(val)
	if err != nil || dur == 0 {
		return 0, d.Errf("%s: expected a positive duration such as 10s, got %q", key, val)
	}
	return caddy.Duration(dur), nil
}
