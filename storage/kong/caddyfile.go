package kong

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// UnmarshalCaddyfile sets up the storage from Caddyfile tokens; see
// Storage for the syntax. Every subdirective takes exactly one argument and
// may appear once.
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		s.DSN = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	if s.DSN != "" {
		seen["dsn"] = true
	}
	for d.NextBlock(0) {
		key := d.Val()
		if seen[key] {
			return d.Errf("%s: specified more than once", key)
		}
		seen[key] = true

		if ok, err := s.Options.UnmarshalCaddyfile(d); ok || err != nil {
			if err != nil {
				return err
			}
			continue
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
		if p, ok := strs[key]; ok {
			v, err := backend.OneArg(d)
			if err != nil {
				return err
			}
			*p = v
			continue
		}

		switch key {
		case "port", "pg_port", "pool_size", "pg_timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n <= 0 || (key != "pool_size" && key != "pg_timeout" && n > 65535) {
				if key == "port" || key == "pg_port" {
					return d.Errf("%s: expected a port from 1 to 65535, got %q", key, d.Val())
				}
				return d.Errf("%s: expected a positive number, got %q", key, d.Val())
			}
			switch key {
			case "port":
				s.Port = n
			case "pg_port":
				s.PgPort = n
			case "pool_size":
				s.PoolSize = n
			case "pg_timeout":
				s.PgTimeout = n
			}
		case "connect_timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("%s: expected a positive duration such as 10s, got %q", key, d.Val())
			}
			s.ConnectTimeout = caddy.Duration(dur)
		case "pg_ssl", "pg_ssl_verify":
			if !d.NextArg() {
				return d.ArgErr()
			}
			var b bool
			switch d.Val() {
			case "on", "true":
				b = true
			case "off", "false":
			default:
				return d.Errf("%s: expected on or off, got %q", key, d.Val())
			}
			if key == "pg_ssl" {
				s.PgSSL = &b
			} else {
				s.PgSSLVerify = &b
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", key)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}
