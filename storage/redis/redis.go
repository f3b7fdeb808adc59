// Package redis is the caddy.storage.acme_redis module: certmagic storage
// and distributed locks in Redis (standalone, Cluster or Sentinel).
package redis

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

func init() {
	caddy.RegisterModule(new(Storage))
}

// Storage keeps certmagic's data (certificates, keys, ACME accounts,
// challenge tokens, …) in Redis and coordinates the nodes of a cluster with
// locks in Redis. It works with a standalone server, Redis Cluster and
// Sentinel-managed replication, with ACL users, TLS and key prefixes, and is
// usable both inside the acme app and as Caddy's global storage.
//
// Every string field accepts placeholders such as {env.NAME} and
// {file./path}, expanded when the config is loaded; an unknown or empty
// placeholder is an error. Instances with the same connection settings
// share one client, across config reloads. The Caddyfile syntax is under
// UnmarshalCaddyfile. It needs Redis 5 or later (6 for ACL users) and is
// tested with Redis 7.0.
//
// # Data layout
//
// Every key lives under key_prefix (P below). A certmagic key k with value
// v is the hash P+"v:"+k with the fields value (v, or v sealed with
// encryption_key), size (the length of v) and modified (Unix nanoseconds).
// Load is one HGET, Stat one HMGET: no encoding of the value, one round trip.
//
// So that List costs O(children) and never scans the key space, every
// directory D has an index, the hash P+"d:"+D (D is "" for the root), whose
// fields name D's direct children: "name" for a file, "name/" for a
// directory (a name may be both). Each field's value is the time, in Unix
// milliseconds on the writer's clock, the field was last written (after a
// "+" when a script wrote it with the value, see below).
//
// Store writes the index fields of every directory above the key first
// and the value last: on a standalone or Sentinel-managed server in one Lua
// script, atomically with the check that the key is neither below a value
// nor a directory (one round trip); on Cluster in three round trips (the
// check, then the indexes, which live on other nodes, then the value). The
// indexes therefore always name at least every key that has a value: a
// writer that stops halfway (a crash, a lost connection) leaves at worst
// index fields without a value behind, never a value that List cannot
// find. On Cluster no command touches more than one key, so nothing
// depends on keys sharing a hash slot, and keys spread over the whole
// cluster.
//
// Readers never trust an index field alone, but for the "+" fields below.
// A file exists if its value
// hash does; a directory exists if some file below it does. List, Stat and
// Exists check the children they are about to report (one level of the
// tree per step, stopping at the first file found for a directory) and
// leave out the ones that do not exist; fields found stale are removed
// ("pruned"). Delete walks the indexes below the key, removes the values it
// finds and then the index fields (values first, so an interrupted Delete
// leaves nothing unlisted), and the field of each directory above that it
// left empty.
//
// On a standalone or Sentinel-managed server, Delete, the List of one
// directory and the Stat of a directory are each one Lua script too: one
// round trip, atomic. The fields these scripts write are stamped "+" and
// the Unix ms; as the scripts write and remove such a field together with
// its value, a "+" field whose file or directory is gone is removed by the
// first script that finds it, so a mass Delete leaves the index as small as
// the files left. Every script leaves each "+" field naming something that
// exists, so the List of a directory whose index has only "+" fields reads
// it as it is: one HGETALL (and an EXISTS in the same round trip for an
// empty one). An index with other fields is checked by a script instead. A
// script checks at most 1 024 keys, so that a directory of 100 000 children
// never blocks the server for long: that check pages through a large index
// (256 children per round trip), and what a script leaves unchecked is
// checked as on Cluster. Recursive List walks as on Cluster.
//
// Fields written otherwise — by Cluster's three round trips, or by an
// earlier version of this storage during a rolling upgrade — and every
// prune made after a check in an earlier round trip keep a grace: such a
// field is removed only if it was last written at least a minute ago by the
// Redis server's clock (a "+" stamp counts as its Unix ms there). The
// minute's grace is what makes concurrent Store, Delete and reads safe
// without multi-key transactions (which Cluster does not allow across
// slots): a field that a Store has just written, but whose value it has not
// written yet, looks stale for a moment, and is left alone. A Store racing
// with a Delete of the same key or a directory above it is ordered one way
// or the other: either the value is deleted, or it survives and is listed.
// On Cluster, index fields the same instance wrote in the last 5 seconds
// are not written again (nothing removes a field that young), so a burst
// of Stores into one directory, such as certmagic's certificate, key and
// metadata, costs a single HSET each after the first; deleted entries stay
// in its indexes, costing readers a check each, until pruned a minute
// later.
//
// Failure modes: on Cluster, a Store whose value write comes more than 55
// seconds after its index writes (a process frozen in between); writers whose
// clocks run more than 55 seconds behind the Redis server's, or index keys
// removed behind the storage's back (FLUSHDB, eviction under a maxmemory
// policy other than noeviction) can leave a value that exists (Load and
// Stat find it) but is missing from List until it is stored again; values
// removed that way on a standalone or Sentinel-managed server stay listed
// until they are stored or deleted again (Stat and Load do not find them).
// Stale
// fields cost readers one check each until they are pruned. As with any
// Redis replication, a failover (Sentinel, Cluster) may lose the last
// writes the old master had not yet replicated.
//
// # Locks
//
// A lock is the string P+"l:"+name, created with SET NX PX (the lease,
// lock_lease) holding a random owner token. While it is held, its lease
// is extended every lock_refresh by a script that extends it only if the
// token is still this instance's, and never shortens it (RenewLockLease
// extends it the same way to the duration certmagic asks for). Unlock
// deletes it by a script that compares the token first, so an instance
// only ever releases its own lock, and then publishes on the channel
// P+"unlock:"+name. A Lock that finds the lock taken subscribes to that
// channel and tries again on every message, or when the lease it saw
// expires, or at the latest every min(lease/4, 1s); it returns when its
// context ends. A lock belongs to the storage instance, not to a
// goroutine: a second Lock of a name the instance holds waits like any
// other node's.
//
// Failure modes: a holder that crashes keeps the lock until its lease
// runs out (lock_lease, or longer if certmagic renewed the lease for a
// long operation); then the next waiter takes it. A holder that cannot
// reach Redis for longer than its lease loses the lock without knowing,
// and another node may take it: as certmagic's docs say of every Locker,
// users of these locks must tolerate rare overlaps. With Sentinel or
// Cluster, a failover right after a lock was taken may lose it with the
// unreplicated writes.
type Storage struct {
	// The Redis servers, as host:port. One address is a standalone server;
	// several are seed nodes of a Redis Cluster; with master_name they are
	// the Sentinels to ask for the master. Default: 127.0.0.1:6379.
	Addresses []string `json:"addresses,omitempty"`

	// The name of the master the Sentinels at addresses monitor. Setting it
	// selects Sentinel mode. Default: none (no Sentinel).
	MasterName string `json:"master_name,omitempty"`

	// Use Redis Cluster even though addresses has a single seed node.
	// Default: false (Cluster is used when addresses has several entries
	// and master_name is not set).
	Cluster bool `json:"cluster,omitempty"`

	// The ACL user to log in as (Redis 6 and later). Default: none (the
	// default user).
	Username string `json:"username,omitempty"`

	// The password of username, or of the default user (requirepass). A
	// secret: use {env.NAME} or {file./path}; it never appears in logs or
	// errors. Default: none.
	Password string `json:"password,omitempty"`

	// The ACL user to log in to the Sentinels as, with master_name.
	// Default: none.
	SentinelUsername string `json:"sentinel_username,omitempty"`

	// The password for the Sentinels, with master_name. A secret, like
	// password. Default: none.
	SentinelPassword string `json:"sentinel_password,omitempty"`

	// The logical database to use (SELECT). Redis Cluster has only
	// database 0. Default: 0.
	DB int `json:"db,omitempty"`

	// Prepended to every Redis key and pub/sub channel this storage uses,
	// as is (add your own separator), so that several Caddy clusters (or
	// other programs) can share one Redis; Kong's namespace. Default:
	// "caddy-acme:".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// Connect with TLS, to servers and Sentinels alike; a tls object turns
	// TLS on unless its enabled is false. cert_file and key_file give a
	// client certificate, for servers that require one (tls-auth-clients).
	// Default: no TLS.
	TLS *backend.TLS `json:"tls,omitempty"`

	// How long to wait for a connection to be established. Default: 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// How long to wait for a reply to a command. Default: 3s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`

	// How long to wait for a command to be sent. Default: read_timeout.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	backend.Options

	logger   *zap.Logger
	rt       backend.Runtime
	prefix   string
	grace    time.Duration // how old a stale index field must be to be pruned
	poll     time.Duration // how often a waiting Lock tries again; 0: min(lease/4, 1s)
	poolKey  string
	client   *client
	released atomic.Bool
	held     backend.Held
	recent   recentFields
}

// CaddyModule returns the Caddy module information.
func (*Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.acme_redis",
		New: func() caddy.Module { return new(Storage) },
	}
}

// Provision checks the configuration, expands placeholders and sets up the
// client (shared with other instances that have the same connection
// settings). It does no network I/O: go-redis connects on first use.
func (s *Storage) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	rt, err := s.Options.Provision()
	if err != nil {
		return err
	}
	s.rt = rt
	cs, err := s.settings()
	if err != nil {
		return err
	}
	s.prefix = DefaultKeyPrefix
	if s.KeyPrefix != "" {
		if s.prefix, err = placeholder.Expand("key_prefix", s.KeyPrefix); err != nil {
			return err
		}
	}
	s.grace = pruneGrace
	s.recent.window = pruneGrace / 12
	key, err := cs.key()
	if err != nil {
		return err
	}
	c, err := clients.Acquire(key, cs.newClient)
	if err != nil {
		return fmt.Errorf("creating redis client: %w", err)
	}
	s.client, s.poolKey = c, key
	return nil
}

// Cleanup releases this instance's use of the shared client; the client is
// closed with its last user. Locks still held stay held until Unlock (or
// until their lease ends, if the client was closed). Safe to call more than
// once and after a failed Provision.
func (s *Storage) Cleanup() error {
	if s.client == nil || !s.released.CompareAndSwap(false, true) {
		return nil
	}
	return clients.Release(s.poolKey)
}

// CertMagicStorage returns s, which is a certmagic.Storage.
func (s *Storage) CertMagicStorage() (certmagic.Storage, error) {
	return s, nil
}

// String describes the storage for logs (certmagic logs it with zap.Any),
// without the password or the encryption key.
func (s *Storage) String() string {
	var b strings.Builder
	b.WriteString("acme_redis{addresses=[")
	addrs := s.Addresses
	if len(addrs) == 0 {
		addrs = []string{DefaultAddress}
	}
	b.WriteString(strings.Join(addrs, " "))
	b.WriteString("]")
	if s.MasterName != "" {
		fmt.Fprintf(&b, " master_name=%q", s.MasterName)
	}
	if s.Cluster {
		b.WriteString(" cluster")
	}
	fmt.Fprintf(&b, " db=%d", s.DB)
	prefix := s.KeyPrefix
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	fmt.Fprintf(&b, " key_prefix=%q", prefix)
	if s.Username != "" {
		fmt.Fprintf(&b, " username=%q", s.Username)
	}
	if s.Password != "" {
		b.WriteString(" password=(redacted)")
	}
	if s.SentinelPassword != "" {
		b.WriteString(" sentinel_password=(redacted)")
	}
	if s.TLS.On() {
		b.WriteString(" tls")
	}
	if s.EncryptionKey != "" {
		b.WriteString(" encryption=aes-256-gcm (key redacted)")
	}
	b.WriteString("}")
	return b.String()
}

// DefaultAddress is the Redis server used when addresses is empty.
const DefaultAddress = "127.0.0.1:6379"

// DefaultKeyPrefix is prepended to every Redis key when key_prefix is empty.
const DefaultKeyPrefix = "caddy-acme:"

// pruneGrace is how long ago a stale index field must have been written
// before it is removed (see Storage's data layout).
const pruneGrace = time.Minute

// connSettings are the normalised connection settings, with placeholders
// expanded; equal settings share a client.
type connSettings struct {
	Addrs            []string
	MasterName       string
	Cluster          bool
	Username         string
	Password         string
	SentinelUsername string
	SentinelPassword string
	DB               int
	TLS              string // fingerprint of tlsConfig; "": no TLS
	Dial             time.Duration
	Read             time.Duration
	Write            time.Duration

	tlsConfig *tls.Config
}

// settings checks and expands the connection fields. Its errors name the
// field and never contain a secret.
func (s *Storage) settings() (*connSettings, error) {
	cs := &connSettings{DB: s.DB}
	var err error
	for i, a := range s.Addresses {
		field := fmt.Sprintf("addresses[%d]", i)
		if a, err = placeholder.Expand(field, a); err != nil {
			return nil, err
		}
		if err := checkAddress(a); err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		cs.Addrs = append(cs.Addrs, a)
	}
	for _, f := range []struct {
		name   string
		in     string
		out    *string
		expand func(field, v string) (string, error)
	}{
		{"master_name", s.MasterName, &cs.MasterName, placeholder.Expand},
		{"username", s.Username, &cs.Username, placeholder.Expand},
		{"password", s.Password, &cs.Password, placeholder.ExpandSecret},
		{"sentinel_username", s.SentinelUsername, &cs.SentinelUsername, placeholder.Expand},
		{"sentinel_password", s.SentinelPassword, &cs.SentinelPassword, placeholder.ExpandSecret},
	} {
		if *f.out, err = f.expand(f.name, f.in); err != nil {
			return nil, err
		}
	}
	switch {
	case cs.MasterName != "":
		if len(cs.Addrs) == 0 {
			return nil, errors.New("addresses: the Sentinel addresses are required with master_name")
		}
		if s.Cluster {
			return nil, errors.New("cluster: cannot be combined with master_name (Sentinel)")
		}
	case len(cs.Addrs) == 0:
		cs.Addrs = []string{DefaultAddress}
		cs.Cluster = s.Cluster
	default:
		cs.Cluster = s.Cluster || len(cs.Addrs) > 1
	}
	if cs.MasterName == "" && (cs.SentinelUsername != "" || cs.SentinelPassword != "") {
		return nil, errors.New("sentinel_username, sentinel_password: only used with master_name (Sentinel)")
	}
	if s.DB < 0 {
		return nil, fmt.Errorf("db: must not be negative, got %d", s.DB)
	}
	if cs.Cluster && s.DB != 0 {
		return nil, fmt.Errorf("db: Redis Cluster has only database 0, got %d", s.DB)
	}
	if cs.MasterName == "" {
		// seed and Sentinel order does not matter; a standalone list has one
		slices.Sort(cs.Addrs)
	}
	for _, d := range []struct {
		name string
		in   caddy.Duration
		out  *time.Duration
		def  time.Duration
	}{
		{"dial_timeout", s.DialTimeout, &cs.Dial, 5 * time.Second},
		{"read_timeout", s.ReadTimeout, &cs.Read, 3 * time.Second},
		{"write_timeout", s.WriteTimeout, &cs.Write, 0},
	} {
		if d.in < 0 {
			return nil, fmt.Errorf("%s: must not be negative, got %s", d.name, time.Duration(d.in))
		}
		*d.out = time.Duration(d.in)
		if *d.out == 0 {
			*d.out = d.def
		}
	}
	if cs.Write == 0 {
		cs.Write = cs.Read
	}
	if cs.tlsConfig, cs.TLS, err = s.TLS.ClientConfig(); err != nil {
		return nil, err
	}
	return cs, nil
}

// key identifies the settings in the client pool, without holding secrets
// in clear.
func (cs *connSettings) key() (string, error) {
	b, err := json.Marshal(cs) //nolint:gosec // G117: hashed below, never kept or shown
	if err != nil {
		return "", fmt.Errorf("hashing connection settings: %w", err)
	}
	sum := sha256.Sum256(b)
	return "acme_redis:" + hex.EncodeToString(sum[:]), nil
}

// newClient creates the go-redis client; it does not connect yet.
func (cs *connSettings) newClient() (*client, error) {
	opts := &goredis.UniversalOptions{
		Addrs:                 cs.Addrs,
		MasterName:            cs.MasterName,
		IsClusterMode:         cs.Cluster,
		Username:              cs.Username,
		Password:              cs.Password,
		SentinelUsername:      cs.SentinelUsername,
		SentinelPassword:      cs.SentinelPassword,
		DB:                    cs.DB,
		DialTimeout:           cs.Dial,
		ReadTimeout:           cs.Read,
		WriteTimeout:          cs.Write,
		ContextTimeoutEnabled: true,
		TLSConfig:             cs.tlsConfig,
		ClientName:            "caddy-acme",
		DisableIdentity:       true,
	}
	c := goredis.NewUniversalClient(opts)
	_, cluster := c.(*goredis.ClusterClient)
	return &client{UniversalClient: c, cluster: cluster}, nil
}

// client is a go-redis client shared through clients.
type client struct {
	goredis.UniversalClient
	cluster bool // Redis Cluster: no order between commands to different nodes
}

// Destruct closes the client when its last user has released it.
func (c *client) Destruct() error {
	return c.Close()
}

// clients shares go-redis clients among instances with the same connection
// settings, across config reloads.
var clients = backend.NewPool[*client]()

// checkAddress accepts host:port with a numeric port.
func checkAddress(a string) error {
	if strings.Contains(a, "://") {
		return fmt.Errorf("want host:port, not a URL: %q", a)
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	if host == "" {
		return fmt.Errorf("want host:port, the host is missing in %q", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("want host:port, the port is not a number in 1-65535 in %q", a)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner          = (*Storage)(nil)
	_ caddy.CleanerUpper         = (*Storage)(nil)
	_ caddy.StorageConverter     = (*Storage)(nil)
	_ certmagic.Storage          = (*Storage)(nil)
	_ certmagic.TryLocker        = (*Storage)(nil)
	_ certmagic.LockLeaseRenewer = (*Storage)(nil)
	_ fmt.Stringer               = (*Storage)(nil)
)
