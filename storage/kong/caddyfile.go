package kong

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// UnmarshalCaddyfile sets up the storage from Caddyfile tokens; see
// Storage for the syntax. Every subdirective takes exactly one argument and
// may appear once. It parses only: Provision checks the values.
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		s.DSN = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	strs := map[string]*string{
		"dsn":             &s.DSN,
		"host":            &s.Host,
		"user":            &s.User,
		"password":        &s.Password,
		"database":        &s.Database,
		"schema":          &s.Schema,
		"sslmode":         &s.SSLMode,
		"sslrootcert":     &s.SSLRootCert,
		"sslcert":         &s.SSLCert,
		"sslkey":          &s.SSLKey,
		"tls_server_name": &s.TLSServerName,
		"key_prefix":      &s.KeyPrefix,
		"pg_host":         &s.PgHost,
		"pg_user":         &s.PgUser,
		"pg_password":     &s.PgPassword,
		"pg_database":     &s.PgDatabase,
		"pg_schema":       &s.PgSchema,
		"pg_ssl_cert":     &s.PgSSLCert,
		"pg_ssl_cert_key": &s.PgSSLCertKey,
	}
	seen := make(backend.Seen)
	if s.DSN != "" {
		seen["dsn"] = true
	}
	for d.NextBlock(0) {
		if err := seen.Once(d); err != nil {
			return err
		}
		var err error
		if p, ok := strs[d.Val()]; ok {
			*p, err = backend.OneArg(d)
		} else {
			switch d.Val() {
			case "port":
				s.Port, err = backend.OneInt(d, "a port from 1 to 65535", true)
			case "pg_port":
				s.PgPort, err = backend.OneInt(d, "a port from 1 to 65535", true)
			case "pool_size":
				s.PoolSize, err = backend.OneInt(d, "a positive number", true)
			case "pg_timeout":
				s.PgTimeout, err = backend.OneInt(d, "a positive number", true)
			case "connect_timeout":
				s.ConnectTimeout, err = backend.OneDuration(d)
			case "pg_ssl":
				s.PgSSL, err = onOff(d)
			case "pg_ssl_verify":
				s.PgSSLVerify, err = onOff(d)
			default:
				err = backend.UnmarshalShared(d, &s.Options, nil)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// onOff reads the single on|off (or true|false) argument of Kong's
// boolean subdirectives.
func onOff(d *caddyfile.Dispenser) (*bool, error) {
	key := d.Val()
	v, err := backend.OneArg(d)
	if err != nil {
		return nil, err
	}
	var b bool
	switch v {
	case "on", "true":
		b = true
	case "off", "false":
	default:
		return nil, d.Errf("%s: expected on or off, got %q", key, v)
	}
	return &b, nil
}
