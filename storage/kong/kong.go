// Package kong is the caddy.storage.acme_kong module: certmagic storage in
// the acme_storage table of Kong's PostgreSQL database, beside Kong's own
// rows.
package kong

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

func init() {
	caddy.RegisterModule(new(Storage))
}

// Storage keeps certmagic's data (certificates, keys, ACME accounts,
// challenges, locks) in the acme_storage table of a PostgreSQL database,
// the table Kong's acme plugin uses with storage "kong". It can share the
// database, and the table, with a running Kong: Kong's rows (keys
// "kong_acme:…") are never read, listed, changed or deleted.
//
// Layout. The table is Kong's (id UUID primary key, key TEXT UNIQUE, value
// TEXT, created_at, ttl), created with Kong's DDL on first use if missing,
// plus one index of ours on key in byte order (acme_storage_key_c_idx), so
// that listing a directory is an index range scan under any database
// collation. A certmagic key k is the row "<key_prefix>k"; the root of this
// storage is key_prefix, so Delete("") deletes all our keys and nothing
// else. created_at is the time of the last Store. Values that are UTF-8
// text (PEM, JSON) are stored as they are; other values, and every value
// when encryption_key is set, as "\x01b64:" + base64. Rows whose ttl has
// passed are absent, as in Kong. Non-recursive List is a skip scan that
// costs one index probe per child, however many keys lie below them. Keys
// are UTF-8 without NUL, at most about 2.7 kB with the prefix (PostgreSQL's
// limit for an indexed value). Sessions run in time zone UTC unless the DSN
// sets timezone, as Kong's do: Kong's TTL trigger on the table, fired by
// every INSERT, is only right in UTC. In Kong's hybrid mode the control
// plane exports the acme_storage table to its data planes, our rows
// included: set encryption_key there.
//
// Locks. A lock is the row "<key_prefix>/locks/<name>" (outside the key
// space: certmagic keys never start with "/"), whose value is the
// holder's random token and whose ttl is the end of its lease, on the
// database server's clock (node clocks do not matter). Lock inserts the row,
// or takes it over when its ttl has passed, in one statement; while held, the
// lease is extended every lock_refresh. Unlock deletes the row only if it
// still holds this instance's token, and in the same transaction NOTIFYs
// the channel caddy_acme_locks; nodes waiting in Lock LISTEN on one
// connection per pool and retry at once, else every min(lock_lease/4, 1s).
// Failure modes: a holder that crashes or loses the database keeps the lock
// until its lease ends (lock_lease, 30s by default), then any node takes it
// over; a holder that cannot refresh for a whole lease (database down or
// partitioned) loses the lock while it may still be working, and its
// Unlock then leaves the new holder's row alone and logs a warning. A lost
// notification (listener reconnecting) delays a handoff to the next poll.
//
// Caddyfile (every subdirective at most once; the connection is either dsn
// or the separate fields, Kong's pg_* names being aliases of them):
//
//	storage acme_kong [<dsn>] {
//		dsn             <postgres://user:password@host:port/database?sslmode=… | key=value …>
//		host            <host>
//		port            <port>
//		user            <user>
//		password        <password>
//		database        <database>
//		schema          <schema>
//		sslmode         disable|allow|prefer|require|verify-ca|verify-full
//		sslrootcert     <ca_file>
//		sslcert         <client_cert_file>
//		sslkey          <client_key_file>
//		tls_server_name <name>
//		connect_timeout <duration>
//		pool_size       <connections>
//		key_prefix      <prefix>
//		encryption_key  <base64_or_hex_key>
//		lock_lease      <duration>
//		lock_refresh    <duration>
//		pg_host|pg_port|pg_user|pg_password|pg_database|pg_schema <value>
//		pg_ssl          on|off
//		pg_ssl_verify   on|off
//		pg_ssl_cert     <client_cert_file>
//		pg_ssl_cert_key <client_key_file>
//		pg_timeout      <milliseconds>
//	}
type Storage struct {
	// A PostgreSQL connection string, as a URL
	// (postgres://user:password@host:5432/kong?sslmode=verify-full&sslrootcert=/ca.pem)
	// or libpq key=value pairs (host=db user=kong dbname=kong), with every
	// libpq parameter pgx supports (several hosts, sslmode, sslrootcert,
	// sslsni, application_name, search_path, pool_max_conns …). It cannot be
	// combined with host, port, user, database or the ssl* fields; password,
	// schema, tls_server_name, connect_timeout and pool_size may accompany
	// it and take precedence. A secret: use {env.NAME} or {file./path}.
	// Default: the separate fields.
	DSN string `json:"dsn,omitempty"`

	// The server's host name, IP address, or Unix socket directory (a path
	// starting with "/"). Several, comma-separated, are tried in order.
	// Kong: pg_host. Default: $PGHOST, else a local socket or localhost,
	// as libpq.
	Host string `json:"host,omitempty"`

	// The server's TCP port. Kong: pg_port. Default: $PGPORT, else 5432.
	Port int `json:"port,omitempty"`

	// The database role to connect as. Kong: pg_user. Default: $PGUSER,
	// else the operating system user.
	User string `json:"user,omitempty"`

	// The role's password. Kong: pg_password. A secret: use {env.NAME} or
	// {file./path}. Default: $PGPASSWORD, else ~/.pgpass, else none.
	Password string `json:"password,omitempty"`

	// The database holding Kong's acme_storage table. Kong: pg_database.
	// Default: $PGDATABASE, else the user name.
	Database string `json:"database,omitempty"`

	// The schema search path the table is found in (and created in), as
	// Kong's pg_schema. Kong: pg_schema. Default: the role's search_path
	// (normally public).
	Schema string `json:"schema,omitempty"`

	// TLS to the server, as libpq's sslmode: disable, allow, prefer (TLS if
	// the server offers it, unverified), require (TLS, verified against
	// sslrootcert only if that is set), verify-ca (TLS, certificate chain
	// verified) or verify-full (TLS, chain and host name verified). Kong's
	// pg_ssl and pg_ssl_verify map to it: pg_ssl off is disable; pg_ssl on
	// is require (Kong would silently fall back to plain text); pg_ssl on
	// with pg_ssl_verify on is verify-full. Default: $PGSSLMODE, else
	// prefer.
	SSLMode string `json:"sslmode,omitempty"`

	// A PEM file of the CA certificates that verify the server's
	// certificate, or "system" for the system's roots (implies
	// verify-full). Default: none.
	SSLRootCert string `json:"sslrootcert,omitempty"`

	// A PEM client certificate file for certificate authentication, with
	// sslkey. Kong: pg_ssl_cert. Default: none.
	SSLCert string `json:"sslcert,omitempty"`

	// The PEM private key file of sslcert. Kong: pg_ssl_cert_key.
	// Default: none.
	SSLKey string `json:"sslkey,omitempty"`

	// The name the server's certificate must be valid for, and sent as SNI,
	// when it differs from host (e.g. host is an IP address). Only
	// verify-full checks it. Default: host.
	TLSServerName string `json:"tls_server_name,omitempty"`

	// How long connecting (TCP, TLS and authentication) may take. Kong's
	// pg_timeout, in milliseconds, is an alias. Default: 10s (or the DSN's
	// connect_timeout).
	ConnectTimeout caddy.Duration `json:"connect_timeout,omitempty"`

	// The most connections the pool opens to the server; storages with the
	// same connection settings share one pool, and lock waiters one more
	// connection. Default: the greater of 4 and the number of CPUs (or the
	// DSN's pool_max_conns).
	PoolSize int `json:"pool_size,omitempty"`

	// What every row key of this storage starts with; a "/" is appended if
	// missing. Storages with different prefixes never see each other's
	// keys; it must not start with "kong_acme:", Kong's own namespace.
	// Default: "caddy/".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// Kong's kong.conf name for host. Default: none.
	PgHost string `json:"pg_host,omitempty"`

	// Kong's kong.conf name for port. Default: none.
	PgPort int `json:"pg_port,omitempty"`

	// Kong's kong.conf name for user. Default: none.
	PgUser string `json:"pg_user,omitempty"`

	// Kong's kong.conf name for password. A secret: use {env.NAME} or
	// {file./path}. Default: none.
	PgPassword string `json:"pg_password,omitempty"`

	// Kong's kong.conf name for database. Default: none.
	PgDatabase string `json:"pg_database,omitempty"`

	// Kong's kong.conf name for schema. Default: none.
	PgSchema string `json:"pg_schema,omitempty"`

	// Kong's pg_ssl: TLS on (sslmode require, or verify-full with
	// pg_ssl_verify) or off (sslmode disable). Cannot be combined with
	// sslmode. Default: unset (sslmode decides).
	PgSSL *bool `json:"pg_ssl,omitempty"`

	// Kong's pg_ssl_verify: with pg_ssl on, verify the server's certificate
	// and host name (sslmode verify-full; give the CA in sslrootcert, Kong's
	// lua_ssl_trusted_certificate). Without pg_ssl it is an error, where
	// Kong ignores it. Default: unset.
	PgSSLVerify *bool `json:"pg_ssl_verify,omitempty"`

	// Kong's kong.conf name for sslcert. Default: none.
	PgSSLCert string `json:"pg_ssl_cert,omitempty"`

	// Kong's kong.conf name for sslkey. Default: none.
	PgSSLCertKey string `json:"pg_ssl_cert_key,omitempty"`

	// Kong's pg_timeout in milliseconds: an alias of connect_timeout.
	// Default: none.
	PgTimeout int `json:"pg_timeout,omitempty"`

	// Encryption at rest and lock timing, shared by caddy-acme's storages.
	backend.Options

	logger  *zap.Logger
	rt      backend.Runtime
	prefix  string // key_prefix, ending in "/"
	poolKey string // "" once released
	client  *client
	desc    string // redacted connection summary
	held    backend.Held
	poll    time.Duration // how often a waiting Lock retries; 0: min(lock_lease/4, 1s)
}

// CaddyModule returns the Caddy module information.
func (*Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.acme_kong",
		New: func() caddy.Module { return new(Storage) },
	}
}

// Provision checks the configuration and expands placeholders. It makes
// no connection: the pool connects, and the table is created, on first
// use.
func (s *Storage) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	rt, err := s.Options.Provision()
	if err != nil {
		return err
	}
	s.rt = rt

	prefix := s.KeyPrefix
	if prefix != "" {
		if prefix, err = placeholder.Expand("key_prefix", prefix); err != nil {
			return err
		}
	}
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	switch {
	case strings.HasPrefix(prefix, kongNamespace):
		return fmt.Errorf("key_prefix: must not start with %q, Kong's own keys", kongNamespace)
	case !validText(prefix):
		return errors.New("key_prefix: contains a NUL byte or invalid UTF-8")
	}
	s.prefix = prefix

	c, err := s.resolveConn()
	if err != nil {
		return err
	}
	cfg, key, err := c.poolConfig()
	if err != nil {
		return err
	}
	s.desc = describe(cfg)
	logger := s.logger
	s.client, err = clients.Acquire(key, func() (*client, error) {
		return newClient(cfg, logger), nil
	})
	if err != nil {
		return err
	}
	s.poolKey = key
	return nil
}

// Cleanup releases this storage's use of the shared pool; the last user
// closes it. Locks still held are left to their holders' Unlock.
func (s *Storage) Cleanup() error {
	if s.poolKey == "" {
		return nil
	}
	key := s.poolKey
	s.poolKey = ""
	return clients.Release(key)
}

// CertMagicStorage returns s, which is a certmagic.Storage.
func (s *Storage) CertMagicStorage() (certmagic.Storage, error) {
	return s, nil
}

// String describes s without its password, DSN or encryption key (certmagic
// logs storages with it).
func (s *Storage) String() string {
	desc := s.desc
	if desc == "" {
		desc = "postgres (not provisioned)"
		if s.DSN != "" {
			desc = "postgres dsn=(redacted)"
		}
	}
	prefix := s.prefix
	if prefix == "" {
		prefix = s.KeyPrefix
	}
	enc := s.rt.Sealer.String()
	if s.rt.Sealer == nil && s.EncryptionKey != "" {
		enc = "configured (key redacted)"
	}
	return fmt.Sprintf("acme_kong(%s key_prefix=%q encryption=%s)", desc, prefix, enc)
}

// Store puts value at key, in one statement.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	k, err := cleanKey(key)
	if err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	if k == "" {
		return errors.New("storing: empty key")
	}
	pool, err := s.client.get(ctx)
	if err != nil {
		return fmt.Errorf("storing %s: %w", k, err)
	}
	// refused below a value (backend.ErrUnderValue) or over a directory
	// (backend.ErrIsDir), as Caddy's file storage does: checked and
	// written in one statement, one round trip (sqlStoreChecked). The
	// check reads before the write in the statement's snapshot: two nodes
	// storing "a" and "a/b" at the same moment can both succeed.
	parents := backend.Parents(k)
	rows := make([]string, len(parents))
	for i, p := range parents {
		rows[i] = s.prefix + p
	}
	row := s.prefix + k
	text := encodeValue(s.rt.Sealer.Seal(k, value), s.rt.Sealer != nil)
	var above *string
	var dir bool
	if err := pool.QueryRow(ctx, sqlStoreChecked, newID(), row, text, rows, row+"/", row+"0").Scan(&above, &dir); err != nil {
		return fmt.Errorf("storing %s: %w", k, err)
	}
	if above != nil {
		return backend.ErrUnderValue(k, strings.TrimPrefix(*above, s.prefix))
	}
	if dir {
		return backend.ErrIsDir(k)
	}
	return nil
}

// Load returns the value at key, or an error wrapping fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	k, err := cleanKey(key)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w: %w", key, err, fs.ErrNotExist)
	}
	if k == "" {
		return nil, fmt.Errorf("loading the root: %w", fs.ErrNotExist)
	}
	pool, err := s.client.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", k, err)
	}
	var text []byte
	switch err := pool.QueryRow(ctx, sqlLoad, s.prefix+k).Scan(&text); {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("loading %s: %w", k, fs.ErrNotExist)
	case err != nil:
		return nil, fmt.Errorf("loading %s: %w", k, err)
	}
	v, err := decodeValue(text)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", k, err)
	}
	if v, err = s.rt.Sealer.Open(k, v); err != nil {
		return nil, fmt.Errorf("loading %s: %w", k, err)
	}
	return v, nil
}

// Delete deletes key and, if it is a directory, everything below it; a
// missing key is not an error. Delete("") deletes every key of this
// storage (below key_prefix), but no lock and nothing else in the table.
func (s *Storage) Delete(ctx context.Context, key string) error {
	k, err := cleanKey(key)
	if err != nil {
		return nil // no such key can exist
	}
	pool, err := s.client.get(ctx)
	if err != nil {
		return fmt.Errorf("deleting %s: %w", k, err)
	}
	if k == "" {
		locks := s.prefix + "/"
		_, err = pool.Exec(ctx, sqlDeleteRoot, s.prefix, succ(s.prefix), locks, succ(locks))
	} else {
		row := s.prefix + k
		_, err = pool.Exec(ctx, sqlDelete, row, row+"/", row+"0")
	}
	if err != nil {
		return fmt.Errorf("deleting %s: %w", k, err)
	}
	return nil
}

// Exists reports whether key is a file or a directory. The root always
// exists.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	k, err := cleanKey(key)
	if err != nil {
		return false
	}
	if k == "" {
		return true
	}
	pool, err := s.client.get(ctx)
	if err != nil {
		return false
	}
	row := s.prefix + k
	var ok bool
	if err := pool.QueryRow(ctx, sqlExists, row, row+"/", row+"0").Scan(&ok); err != nil {
		return false
	}
	return ok
}

// Stat describes key: a file (with its size and last Store time) or a
// directory (IsTerminal false), in one query.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	k, err := cleanKey(key)
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w: %w", key, err, fs.ErrNotExist)
	}
	if k == "" {
		return certmagic.KeyInfo{Key: "", IsTerminal: false}, nil
	}
	pool, err := s.client.get(ctx)
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", k, err)
	}
	row := s.prefix + k
	var size *int64
	var head []byte
	var modified *time.Time
	switch err := pool.QueryRow(ctx, sqlStat, row, row+"/", row+"0").Scan(&size, &head, &modified); {
	case errors.Is(err, pgx.ErrNoRows):
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", k, fs.ErrNotExist)
	case err != nil:
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", k, err)
	}
	if size == nil {
		return certmagic.KeyInfo{Key: k, IsTerminal: false}, nil
	}
	info := certmagic.KeyInfo{Key: k, IsTerminal: true}
	info.Size = s.rt.Sealer.OpenedLen(decodedLen(*size, bytes.HasPrefix(head, []byte(marker))), decodedHead(head))
	if modified != nil {
		info.Modified = *modified
	}
	return info, nil
}

// List returns the full keys below dir: its direct children (files and
// directories), or with recursive every key below it, directories
// included. A missing directory is fs.ErrNotExist; a file has no
// children; the root always exists.
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	d, err := cleanKey(dir)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w: %w", dir, err, fs.ErrNotExist)
	}
	pool, err := s.client.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", d, err)
	}
	lo := s.prefix
	if d != "" {
		lo += d + "/"
	}
	l := newLister(d, lo, recursive)
	read := func(sql string, args ...any) (int, error) {
		rows, err := pool.Query(ctx, sql, args...)
		if err != nil {
			return 0, err
		}
		var rowKey string
		n, err := pgx.ForEachRow(rows, []any{&rowKey}, func() error {
			l.add(rowKey)
			return nil
		})
		return int(n.RowsAffected()), err
	}
	switch {
	case recursive:
		_, err = read(sqlListRecursive, lo, succ(lo))
	default:
		// a small directory in one range read, a bigger one by the skip
		// scan (listRangeRead)
		var n int
		if n, err = read(sqlListHead, lo, succ(lo), listRangeRead+1); err == nil && n > listRangeRead {
			// the lister drops the children met twice
			_, err = read(sqlList, lo, succ(lo), utf8.RuneCountInString(lo)+1)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", d, err)
	}
	keys := l.keys
	if len(keys) > 0 || d == "" {
		return keys, nil
	}
	var file bool
	if err := pool.QueryRow(ctx, sqlFileExists, s.prefix+d).Scan(&file); err != nil {
		return nil, fmt.Errorf("listing %s: %w", d, err)
	}
	if !file {
		return nil, fmt.Errorf("listing %s: %w", d, fs.ErrNotExist)
	}
	return keys, nil
}

// lister turns the row keys a List query returns into the keys List
// reports.
type lister struct {
	d, lo     string // the directory listed, and its row key prefix
	recursive bool
	seen      map[string]struct{}
	keys      []string
}

func newLister(d, lo string, recursive bool) *lister {
	return &lister{d: d, lo: lo, recursive: recursive, seen: make(map[string]struct{}), keys: []string{}}
}

// add takes in one row key: nothing for a row that is not one of our keys
// below the directory (a lock row, below the root and starting with "/",
// or Kong's own); else the child of the directory it lies under or, with
// recursive, the key and every directory above it up to the directory
// listed. Of a row key not in canonical form (Store never writes one), only
// the directories before its first empty component count.
func (l *lister) add(rowKey string) {
	rel, ok := strings.CutPrefix(rowKey, l.lo)
	if !ok {
		return
	}
	for i := 0; i <= len(rel); i++ {
		if i < len(rel) && rel[i] != '/' {
			continue
		}
		if i == 0 || rel[i-1] == '/' {
			return // an empty component
		}
		l.child(rel[:i])
		if !l.recursive {
			return
		}
	}
}

// child records the key rel below the directory, once.
func (l *lister) child(rel string) {
	if _, ok := l.seen[rel]; ok {
		return
	}
	l.seen[rel] = struct{}{}
	if l.d == "" {
		l.keys = append(l.keys, rel)
	} else {
		l.keys = append(l.keys, l.d+"/"+rel)
	}
}

// cleanKey returns key in canonical form: no leading, trailing or doubled
// slashes. Keys must be UTF-8 without NUL (the key column is TEXT).
func cleanKey(key string) (string, error) {
	k := backend.Clean(key)
	if strings.Contains(k, "//") {
		parts := strings.Split(k, "/")
		k = strings.Join(slicesDeleteEmpty(parts), "/")
	}
	if !validText(k) {
		return "", errInvalidKey
	}
	return k, nil
}

func slicesDeleteEmpty(parts []string) []string {
	out := parts[:0]
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

func validText(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// newID returns a random (version 4) UUID for a new row's id.
func newID() pgtype.UUID {
	u := pgtype.UUID{Valid: true}
	if _, err := rand.Read(u.Bytes[:]); err != nil {
		panic("caddy-acme: reading random UUID: " + err.Error())
	}
	u.Bytes[6] = u.Bytes[6]&0x0f | 0x40
	u.Bytes[8] = u.Bytes[8]&0x3f | 0x80
	return u
}

// DefaultKeyPrefix is the key_prefix when none is configured.
const DefaultKeyPrefix = "caddy/"

// kongNamespace starts every key Kong's acme plugin writes.
const kongNamespace = "kong_acme:"

var errInvalidKey = errors.New("key is not valid UTF-8 or contains a NUL byte")

// Interface guards
var (
	_ caddy.Module               = (*Storage)(nil)
	_ caddy.Provisioner          = (*Storage)(nil)
	_ caddy.CleanerUpper         = (*Storage)(nil)
	_ caddy.StorageConverter     = (*Storage)(nil)
	_ caddyfile.Unmarshaler      = (*Storage)(nil)
	_ certmagic.Storage          = (*Storage)(nil)
	_ certmagic.TryLocker        = (*Storage)(nil)
	_ certmagic.LockLeaseRenewer = (*Storage)(nil)
	_ fmt.Stringer               = (*Storage)(nil)
	_ caddy.Destructor           = (*client)(nil)
)
