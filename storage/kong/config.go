package kong

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/acmekit/caddy-acme/internal/placeholder"
)

// conn is the connection settings of a Storage with Kong's aliases merged
// in and placeholders expanded.
type conn struct {
	dsn, host, user, password, database, schema string
	sslmode, sslrootcert, sslcert, sslkey       string
	tlsServerName                               string
	port                                        int
	connectTimeout                              time.Duration
	poolSize                                    int
}

// resolveConn merges the Kong aliases into the canonical fields, expands
// placeholders and checks the values. Its errors name the field and never
// contain a secret.
func (s *Storage) resolveConn() (conn, error) {
	var c conn
	// pick returns the value of a field or of its Kong alias; both set is
	// an error, even when they agree, so that a config says a thing once.
	pick := func(field, v, alias, av string, expand func(field, v string) (string, error)) (string, error) {
		if v != "" && av != "" {
			return "", fmt.Errorf("%s: cannot be combined with its alias %s", alias, field)
		}
		if av != "" {
			return expand(alias, av)
		}
		return expand(field, v)
	}
	var err error
	// a DSN can carry a password
	if c.dsn, err = placeholder.ExpandSecret("dsn", s.DSN); err != nil {
		return c, err
	}
	if c.host, err = pick("host", s.Host, "pg_host", s.PgHost, placeholder.Expand); err != nil {
		return c, err
	}
	if c.user, err = pick("user", s.User, "pg_user", s.PgUser, placeholder.Expand); err != nil {
		return c, err
	}
	if c.password, err = pick("password", s.Password, "pg_password", s.PgPassword, placeholder.ExpandSecret); err != nil {
		return c, err
	}
	if c.database, err = pick("database", s.Database, "pg_database", s.PgDatabase, placeholder.Expand); err != nil {
		return c, err
	}
	if c.schema, err = pick("schema", s.Schema, "pg_schema", s.PgSchema, placeholder.Expand); err != nil {
		return c, err
	}
	if c.sslcert, err = pick("sslcert", s.SSLCert, "pg_ssl_cert", s.PgSSLCert, placeholder.Expand); err != nil {
		return c, err
	}
	if c.sslkey, err = pick("sslkey", s.SSLKey, "pg_ssl_cert_key", s.PgSSLCertKey, placeholder.Expand); err != nil {
		return c, err
	}
	if c.sslrootcert, err = placeholder.Expand("sslrootcert", s.SSLRootCert); err != nil {
		return c, err
	}
	if c.tlsServerName, err = placeholder.Expand("tls_server_name", s.TLSServerName); err != nil {
		return c, err
	}

	switch {
	case s.Port != 0 && s.PgPort != 0:
		return c, errors.New("pg_port: cannot be combined with its alias port")
	case s.PgPort != 0:
		c.port = s.PgPort
		if c.port < 1 || c.port > 65535 {
			return c, fmt.Errorf("pg_port: must be from 1 to 65535, got %d", c.port)
		}
	default:
		c.port = s.Port
		if c.port < 0 || c.port > 65535 {
			return c, fmt.Errorf("port: must be from 1 to 65535, got %d", c.port)
		}
	}

	// sslmode, or Kong's pg_ssl and pg_ssl_verify
	c.sslmode = s.SSLMode
	if s.PgSSL != nil || s.PgSSLVerify != nil {
		if c.sslmode != "" {
			return c, errors.New("sslmode: cannot be combined with pg_ssl or pg_ssl_verify")
		}
		ssl := s.PgSSL != nil && *s.PgSSL
		verify := s.PgSSLVerify != nil && *s.PgSSLVerify
		switch {
		case verify && !ssl:
			return c, errors.New("pg_ssl_verify: needs pg_ssl on (Kong ignores pg_ssl_verify without pg_ssl; set sslmode to say what you mean)")
		case verify:
			c.sslmode = "verify-full"
		case ssl:
			c.sslmode = "require"
		default:
			c.sslmode = "disable"
		}
	}
	switch c.sslmode {
	case "", "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
	default:
		return c, fmt.Errorf("sslmode: must be one of disable, allow, prefer, require, verify-ca, verify-full; got %q", c.sslmode)
	}

	switch {
	case s.ConnectTimeout != 0 && s.PgTimeout != 0:
		return c, errors.New("pg_timeout: cannot be combined with connect_timeout")
	case s.PgTimeout < 0:
		return c, fmt.Errorf("pg_timeout: must be a positive number of milliseconds, got %d", s.PgTimeout)
	case s.PgTimeout > 0:
		c.connectTimeout = time.Duration(s.PgTimeout) * time.Millisecond
	case s.ConnectTimeout < 0:
		return c, fmt.Errorf("connect_timeout: must be positive, got %s", time.Duration(s.ConnectTimeout))
	default:
		c.connectTimeout = time.Duration(s.ConnectTimeout)
	}
	if s.PoolSize < 0 {
		return c, fmt.Errorf("pool_size: must be positive, got %d", s.PoolSize)
	}
	c.poolSize = s.PoolSize

	if c.dsn != "" {
		var both []string
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"host", c.host != ""},
			{"port", c.port != 0},
			{"user", c.user != ""},
			{"database", c.database != ""},
			{"sslmode", c.sslmode != ""},
			{"sslrootcert", c.sslrootcert != ""},
			{"sslcert", c.sslcert != ""},
			{"sslkey", c.sslkey != ""},
		} {
			if f.set {
				both = append(both, f.name)
			}
		}
		if len(both) > 0 {
			return c, fmt.Errorf("dsn: cannot be combined with %s (or their pg_ aliases): put them in the DSN", strings.Join(both, ", "))
		}
	}
	for _, f := range []struct{ name, v string }{
		{"dsn", c.dsn}, {"host", c.host}, {"user", c.user}, {"password", c.password}, {"database", c.database}, {"schema", c.schema},
	} {
		if strings.ContainsRune(f.v, 0) || !utf8.ValidString(f.v) {
			return c, fmt.Errorf("%s: contains a NUL byte or invalid UTF-8", f.name)
		}
	}
	return c, nil
}

// connString returns the libpq connection string of c: the DSN, or a
// keyword/value string built from the fields in a fixed order (so equal
// settings give equal strings). The password is not in it: it is set on
// the parsed config, and reaches neither the string nor parse errors.
func (c conn) connString() string {
	if c.dsn != "" {
		return c.dsn
	}
	var b strings.Builder
	add := func(k, v string) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteString("='")
		b.WriteString(strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v))
		b.WriteByte('\'')
	}
	add("host", c.host)
	if c.port != 0 {
		add("port", strconv.Itoa(c.port))
	}
	add("user", c.user)
	add("dbname", c.database)
	add("sslmode", c.sslmode)
	add("sslrootcert", c.sslrootcert)
	add("sslcert", c.sslcert)
	add("sslkey", c.sslkey)
	return b.String()
}

// poolConfig parses c into a pgxpool configuration (reading the TLS files
// it names, as libpq does, but making no connection), and returns it with
// the key under which its client is shared: a hash of the normalised
// settings, so two storages with the same connection settings share one
// pool whatever their key_prefix or encryption key.
func (c conn) poolConfig() (*pgxpool.Config, string, error) {
	cs := c.connString()
	cfg, err := pgxpool.ParseConfig(cs)
	if err != nil {
		field := "dsn"
		if c.dsn == "" {
			field = "connection settings (host, port, user, database, ssl*)"
		}
		return nil, "", fmt.Errorf("%s: %s", field, parseError(err, c))
	}
	if c.password != "" {
		cfg.ConnConfig.Password = c.password
	}
	if c.schema != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = c.schema
	}
	setDefaultParam(cfg.ConnConfig.RuntimeParams, "application_name", "caddy-acme")
	// Kong's sessions run in UTC, and so does its acme_storage trigger
	// (batch_delete_expired_rows compares ttl with CURRENT_TIMESTAMP AT
	// TIME ZONE 'UTC'), which our INSERTs fire too: in another time zone it
	// would delete live lock rows as expired.
	setDefaultParam(cfg.ConnConfig.RuntimeParams, "timezone", "UTC")
	if c.tlsServerName != "" {
		set := false
		for _, tc := range append([]*pgconn.FallbackConfig{{TLSConfig: cfg.ConnConfig.TLSConfig}}, cfg.ConnConfig.Fallbacks...) {
			if tc.TLSConfig != nil {
				tc.TLSConfig.ServerName = c.tlsServerName
				set = true
			}
		}
		if !set {
			return nil, "", errors.New("tls_server_name: set, but sslmode is disable")
		}
	}
	switch {
	case c.connectTimeout > 0:
		cfg.ConnConfig.ConnectTimeout = c.connectTimeout
	case cfg.ConnConfig.ConnectTimeout == 0:
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	if c.poolSize > 0 {
		cfg.MaxConns = int32(min(c.poolSize, 1<<30))
	}
	cfg.MinConns, cfg.MinIdleConns = 0, 0 // connect on demand only

	h := sha256.New()
	for _, v := range []string{
		cs, c.password, c.schema, c.tlsServerName,
		cfg.ConnConfig.ConnectTimeout.String(), strconv.Itoa(int(cfg.MaxConns)),
	} {
		h.Write([]byte(v))
		h.Write([]byte{0})
	}
	return cfg, "acme_kong:" + hex.EncodeToString(h.Sum(nil)), nil
}

// setDefaultParam sets the run-time parameter name (case-insensitive, as
// PostgreSQL's) unless the connection string set it.
func setDefaultParam(params map[string]string, name, value string) {
	for k := range params {
		if strings.EqualFold(k, name) {
			return
		}
	}
	params[name] = value
}

// parseError describes a pgx parse error without the connection string,
// whose redaction pgx does on a best-effort basis only.
func parseError(err error, c conn) string {
	msg := "invalid connection settings"
	if pce, ok := errors.AsType[*pgconn.ParseConfigError](err); ok {
		// "cannot parse `<conn string>`: <msg> (<cause>)"
		text := pce.Error()
		if i := strings.LastIndex(text, "`: "); i >= 0 {
			text = text[i+3:]
		}
		if i := strings.Index(text, " ("); i >= 0 {
			text = text[:i]
		}
		msg = text
		if cause := pce.Unwrap(); cause != nil {
			var ue *url.Error
			var ae *net.AddrError
			if !errors.As(cause, &ue) && !errors.As(cause, &ae) {
				msg += ": " + cause.Error()
			}
		}
	}
	for _, secret := range []string{c.dsn, c.password} {
		if secret != "" {
			msg = strings.ReplaceAll(msg, secret, "(redacted)")
		}
	}
	if c.dsn != "" {
		if u, err := url.Parse(c.dsn); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && pw != "" {
				msg = strings.ReplaceAll(msg, pw, "(redacted)")
			}
		}
	}
	return msg
}

// describe returns the redacted connection summary String shows.
func describe(cfg *pgxpool.Config) string {
	cc := cfg.ConnConfig
	host := cc.Host
	if !strings.HasPrefix(host, "/") {
		host = net.JoinHostPort(host, strconv.Itoa(int(cc.Port)))
	} else {
		host += ":" + strconv.Itoa(int(cc.Port))
	}
	tls := "off"
	if cc.TLSConfig != nil {
		tls = "on"
		if cc.TLSConfig.InsecureSkipVerify && cc.TLSConfig.VerifyPeerCertificate == nil {
			tls = "unverified"
		}
		if len(cc.Fallbacks) > 0 && cc.Fallbacks[len(cc.Fallbacks)-1].TLSConfig == nil {
			tls += "-or-off"
		}
	}
	return fmt.Sprintf("postgres %s@%s/%s tls=%s", cc.User, host, cc.Database, tls)
}

const defaultConnectTimeout = 10 * time.Second
