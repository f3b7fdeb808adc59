package kongcompat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/storage/kong"
)

// postgresSource reads Kong's PostgreSQL database: the acme_storage table
// of `kong` storage (rows whose ttl has passed are absent, as Kong's
// selects filter them, although they stay in the table until a later
// insert purges them), and, in database mode, the certificates and snis
// tables where Kong's acme plugin saved what it issued.
type postgresSource struct {
	conn *pgx.Conn
	name string // host:port/database, for the report
}

// newPostgresSource connects with the kong.conf settings the adapter
// mapped (pg_host, pg_port, pg_user, pg_password, pg_database,
// pg_schema, pg_ssl, pg_ssl_verify, pg_ssl_cert, pg_ssl_cert_key,
// pg_timeout and lua_ssl_trusted_certificate as sslrootcert).
func newPostgresSource(ctx context.Context, s *kong.Storage) (*postgresSource, error) {
	var host, user, password, database, schema, rootCert, cert, key string
	var err error
	for _, f := range []struct {
		name, in string
		out      *string
	}{
		{"pg_host", s.PgHost, &host},
		{"pg_user", s.PgUser, &user},
		{"pg_database", s.PgDatabase, &database},
		{"pg_schema", s.PgSchema, &schema},
		{"sslrootcert", s.SSLRootCert, &rootCert},
		{"pg_ssl_cert", s.PgSSLCert, &cert},
		{"pg_ssl_cert_key", s.PgSSLCertKey, &key},
	} {
		if *f.out, err = placeholder.Expand(f.name, f.in); err != nil {
			return nil, err
		}
	}
	if password, err = placeholder.ExpandSecret("pg_password", s.PgPassword); err != nil {
		return nil, err
	}
	port := s.PgPort
	if port == 0 {
		port = 5432
	}
	sslmode := "disable"
	switch {
	case s.PgSSL != nil && *s.PgSSL && s.PgSSLVerify != nil && *s.PgSSLVerify:
		sslmode = "verify-full"
	case s.PgSSL != nil && *s.PgSSL:
		sslmode = "require"
	}
	var b strings.Builder
	add := func(k, v string) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'")
	}
	add("host", host)
	add("port", strconv.Itoa(port))
	add("user", user)
	add("dbname", database)
	add("sslmode", sslmode)
	add("sslrootcert", rootCert)
	add("sslcert", cert)
	add("sslkey", key)
	if s.PgTimeout > 0 {
		add("connect_timeout", strconv.Itoa(max(1, s.PgTimeout/1000)))
	}
	name := net.JoinHostPort(host, strconv.Itoa(port)) + "/" + database
	cfg, err := pgx.ParseConfig(b.String())
	if err != nil {
		return nil, fmt.Errorf("postgres %s: connection settings: %w", name, err)
	}
	cfg.Password = password // not in the string, so never in a parse error
	if schema != "" {
		cfg.RuntimeParams["search_path"] = schema
	}
	cfg.RuntimeParams["application_name"] = "caddy-acme-migrate"
	if s.PgTimeout > 0 {
		cfg.ConnectTimeout = time.Duration(s.PgTimeout) * time.Millisecond
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres %s: connecting: %w", name, err)
	}
	return &postgresSource{conn: conn, name: name}, nil
}

func (p *postgresSource) where() string {
	return fmt.Sprintf("postgres %s, table acme_storage", p.name)
}

func (p *postgresSource) describe(key string) string {
	return fmt.Sprintf("postgres %s table acme_storage key %s", p.name, key)
}

func (p *postgresSource) get(ctx context.Context, key string) (string, bool, error) {
	var v *string
	err := p.conn.QueryRow(ctx, `SELECT value FROM acme_storage WHERE key = $1 AND (ttl IS NULL OR ttl >= now())`, key).Scan(&v)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("postgres %s: reading acme_storage: %w", p.name, err)
	case v == nil:
		return "", false, nil
	}
	return *v, true, nil
}

func (p *postgresSource) list(ctx context.Context, prefix string) ([]string, error) {
	rows, err := p.conn.Query(ctx, `SELECT key FROM acme_storage WHERE left(key, length($1)) = $1 AND (ttl IS NULL OR ttl >= now()) ORDER BY key`, prefix)
	if err != nil {
		return nil, fmt.Errorf("postgres %s: listing acme_storage: %w", p.name, err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("postgres %s: listing acme_storage: %w", p.name, err)
	}
	return keys, nil
}

func (p *postgresSource) close() { _ = p.conn.Close(context.Background()) }

// managedCert is a row of Kong's certificates table tagged
// managed-by-acme, with the name of one SNI that points at it ("" if
// none does).
type managedCert struct {
	id, sni          string
	cert, key        string
	certAlt, keyAlt  string
	hasAlt, hasNoSNI bool
}

// managedCertificates reads what Kong's acme plugin saved in database
// mode (client.lua save_dao): certificates rows tagged managed-by-acme
// (tags is a text[] column) and the snis rows naming them, one result
// per SNI (a certificate without SNI once, with hasNoSNI).
func (p *postgresSource) managedCertificates(ctx context.Context) ([]managedCert, error) {
	const withAlt = `SELECT c.id::text, coalesce(s.name, ''), coalesce(c.cert, ''), coalesce(c.key, ''), coalesce(c.cert_alt, ''), coalesce(c.key_alt, '')
		FROM certificates c LEFT JOIN snis s ON s.certificate_id = c.id
		WHERE c.tags @> ARRAY['managed-by-acme']::text[]
		ORDER BY s.name, c.id`
	rows, err := p.conn.Query(ctx, withAlt)
	alt := true
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42703" { // undefined_column: a Kong before cert_alt (2.3)
		alt = false
		rows, err = p.conn.Query(ctx, strings.Replace(withAlt, "coalesce(c.cert_alt, ''), coalesce(c.key_alt, '')", "'', ''", 1))
	}
	if err != nil {
		return nil, fmt.Errorf("postgres %s: reading Kong's certificates and snis tables: %w", p.name, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (managedCert, error) {
		var m managedCert
		err := row.Scan(&m.id, &m.sni, &m.cert, &m.key, &m.certAlt, &m.keyAlt)
		m.hasAlt = alt && m.certAlt != ""
		m.hasNoSNI = m.sni == ""
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres %s: reading Kong's certificates and snis tables: %w", p.name, err)
	}
	return out, nil
}

func (p *postgresSource) describeEntity(m managedCert, alt bool) string {
	col := "cert, key"
	if alt {
		col = "cert_alt, key_alt"
	}
	s := fmt.Sprintf("postgres %s certificates id %s (%s)", p.name, m.id, col)
	if m.sni != "" {
		s += " via snis name " + m.sni
	}
	return s
}
