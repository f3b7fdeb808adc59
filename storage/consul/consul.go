// Package consul is caddy-acme's Consul storage module,
// caddy.storage.acme_consul: certmagic storage in Consul's KV store with
// locks on Consul sessions.
package consul

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

func init() {
	caddy.RegisterModule(Storage{})
}

// Storage keeps certmagic's data in Consul's KV store (caddy-acme's
// equivalent of Kong's `consul` storage), usable as the `acme` app's
// storage or as Caddy's global storage.
//
// # Layout
//
// A certmagic key k is the Consul key <key_prefix>/k and its value is
// stored raw (or sealed with encryption_key). Consul has no directories: a
// directory exists while some key lies under it. The KV pair's flags hold
// the value's modification time (Unix milliseconds), so Stat reports it.
// List asks Consul for one level with `?keys&separator=/` (the response
// holds only the directory's children; Consul walks the directory's
// descendants to build it), or for every key under the directory when
// recursive, adding the intermediate directories. Keys and lock names with
// an empty, "." or ".." component, or that are not UTF-8, are refused
// (fs.ErrInvalid): Consul's HTTP server cleans request paths, so "a/../b"
// would be "b", and its JSON listings cannot carry other bytes.
//
// Consul limits a value to 512 KiB by default (kv_max_value_size), so a
// larger value is split into 256 KiB chunks under <key_prefix>.chunks/,
// written first; then one transaction checks that every chunk is still
// there and replaces the value at <key_prefix>/k with a small manifest
// (marked by the high bit of its flags). Readers never see a partial value,
// and no server setting needs changing; values up to 30 MiB are accepted.
// Chunks no value refers to any more are removed by the key's Delete, and
// by its next large Store: at once for those of the value that Store
// replaces, after 122×timeout (longer than a writer may take) for others,
// such as those of a large value replaced by a small one or of a writer
// that died midway. They are never listed.
//
// Store first checks that the key is neither below a value nor a directory
// (a read of the directories above it and of its children), then writes
// values up to 256 KiB with one set in a transaction, whose answer gives the
// pair's ModifyIndex, and larger ones up to 512 KiB with a plain PUT. A node
// remembers the ModifyIndex of up to 4 096 keys (backend.Known) it stored or loaded; it
// overwrites such a key in one transaction that checks the index and sets
// the value, with no read first: a key unchanged since is still a value,
// so nothing can lie below it nor above it. If another node changed or
// deleted the key meanwhile, the transaction writes nothing and Store takes
// the full path.
//
// # Locks
//
// Lock and TryLock create a Consul session (TTL lock_lease/2, lock delay
// 0, behavior "delete") and acquire <key_prefix>.locks/<name> with it; the
// lock's owner token is the session ID, and the value records which
// process holds it. Lock keys live beside the certmagic key space, so List
// never shows them. A waiting Lock watches the lock key with a Consul
// blocking query, so it acquires the lock as soon as the holder releases
// it instead of polling. While a lock is held (or awaited) its session is
// renewed every lock_refresh. Unlock destroys the session, which deletes
// the lock key only if this session still holds it, so a lock taken over
// by another node is never released by mistake.
//
// Failure modes: if the holder crashes or loses Consul for longer than
// lock_lease, Consul invalidates the session (it expires sessions lazily,
// between TTL and 2×TTL after the last renewal, i.e. within lock_lease) and
// deletes the lock key, waking the waiters; the holder may then still be
// working, so certmagic's critical sections re-check their work after
// acquiring. Because Consul only accepts session TTLs from 10s to 24h,
// lock_lease must be between 20s and 48h, and lock_refresh at most half of
// it. An Unlock that cannot reach Consul leaves the lock to expire within
// lock_lease.
//
// # Access
//
// With ACLs enabled, the token needs `key_prefix "<key_prefix>" { policy =
// "write" }` (which also covers <key_prefix>.locks/ and
// <key_prefix>.chunks/) and `session_prefix "" { policy = "write" }` (for
// the sessions on the agent's node). A key hidden by the ACL policy is
// reported as an error, never as missing. The configuration is the only
// source of connection settings: Consul's CONSUL_HTTP_* environment
// variables are ignored (use {env.NAME} placeholders instead).
//
// Caddyfile:
//
//	storage acme_consul {
//		address <host:port>
//		scheme http|https
//		token <token>
//		datacenter <name>
//		namespace <name>
//		partition <name>
//		key_prefix <prefix>
//		timeout <duration>
//		tls {
//			enabled <true|false>
//			ca_file <path>
//			server_name <name>
//			insecure_skip_verify
//			cert_file <path>
//			key_file <path>
//		}
//		encryption_key <key>
//		lock_lease <duration>
//		lock_refresh <duration>
//	}
type Storage struct {
	// The host:port of the Consul agent's HTTP(S) API. Default:
	// 127.0.0.1:8500. On a loopback address (localhost, 127.0.0.0/8,
	// ::1) responses are asked for without gzip, which only costs CPU
	// there.
	Address string `json:"address,omitempty"`

	// "http" or "https". Default: "https" if tls is given (and not
	// disabled), else "http".
	Scheme string `json:"scheme,omitempty"`

	// The ACL token sent with every request (header X-Consul-Token). A
	// secret: use {env.NAME} or {file./path}. Default: none (Consul's
	// anonymous token).
	Token string `json:"token,omitempty"`

	// The datacenter to use. Default: the agent's datacenter.
	Datacenter string `json:"datacenter,omitempty"`

	// The Consul Enterprise namespace, sent as a query option with every
	// request. Default: the token's namespace (or "default").
	Namespace string `json:"namespace,omitempty"`

	// The Consul Enterprise admin partition, sent as a query option with
	// every request. Default: the token's partition (or "default").
	Partition string `json:"partition,omitempty"`

	// The KV path everything is stored under (Kong's kv_path), without
	// leading or trailing slashes; locks go to <key_prefix>.locks/ and
	// chunks of large values to <key_prefix>.chunks/. Default:
	// "caddy-acme".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// TLS settings for the connection to Consul; they need scheme https.
	// cert_file and key_file give a client certificate, for agents with
	// verify_incoming. Default: the system's roots, and the address's host
	// as server name.
	TLS *backend.TLS `json:"tls,omitempty"`

	// How long one request to Consul may take, and how long connecting may
	// take. (A Lock waiting for another node's lock is not limited by it.)
	// Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Encryption at rest and lock timing. lock_lease must be between 20s
	// and 48h (Consul's session TTL is half of it) and lock_refresh at
	// most half of lock_lease.
	backend.Options

	conn    connSettings
	poolKey string
	client  *api.Client
	rt      backend.Runtime
	ttl     time.Duration // Consul session TTL: rt.Lease / 2
	timeout time.Duration
	prefix  string // cleaned KeyPrefix
	owner   string // written into the lock keys this instance holds
	logger  *zap.Logger
	st      *state // set by Provision
}

// state is what a provisioned Storage changes as it runs.
type state struct {
	sessions backend.Held // renews the sessions of held and awaited locks, by session ID

	known backend.Known // the ModifyIndex of values this node wrote or read (Store's fast path)

	mu       sync.Mutex        // protects locks, released, crashed
	locks    map[string]string // lock name → session ID holding it
	released bool              // the pool reference was dropped
	crashed  bool              // crash was called
}

// CaddyModule returns the Caddy module information.
func (Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.acme_consul",
		New: func() caddy.Module { return new(Storage) },
	}
}

// Provision checks the configuration, expands placeholders and sets up the
// (shared) client. It does no network I/O: the first request is made by
// the first storage operation.
func (s *Storage) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	if err := s.setup(); err != nil {
		return err
	}
	client, err := clients.Acquire(s.poolKey, func() (*pooledClient, error) {
		return newClient(s.conn)
	})
	if err != nil {
		return fmt.Errorf("creating consul client: %w", err)
	}
	s.client = client.api
	return nil
}

// setup is Provision without the client: checks, placeholders, defaults.
func (s *Storage) setup() error {
	if s.logger == nil {
		s.logger = zap.NewNop()
	}
	var c connSettings
	var err error
	if c.address, err = placeholder.Expand("address", s.Address); err != nil {
		return err
	}
	if c.address == "" {
		c.address = defaultAddress
	}
	if strings.Contains(c.address, "://") {
		return fmt.Errorf("address: want host:port without a scheme (set scheme instead), got %q", c.address)
	}
	if _, port, err := net.SplitHostPort(c.address); err != nil {
		return fmt.Errorf("address: want host:port, got %q: %w", c.address, err)
	} else if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("address: invalid port in %q", c.address)
	}
	c.scheme = s.Scheme
	switch c.scheme {
	case "":
		c.scheme = "http"
		if s.TLS.On() {
			c.scheme = "https"
		}
	case "http", "https":
	default:
		return fmt.Errorf("scheme: want http or https, got %q", s.Scheme)
	}
	if c.token, err = placeholder.ExpandSecret("token", s.Token); err != nil {
		return err
	}
	if c.datacenter, err = placeholder.Expand("datacenter", s.Datacenter); err != nil {
		return err
	}
	if c.namespace, err = placeholder.Expand("namespace", s.Namespace); err != nil {
		return err
	}
	if c.partition, err = placeholder.Expand("partition", s.Partition); err != nil {
		return err
	}
	prefix, err := placeholder.Expand("key_prefix", s.KeyPrefix)
	if err != nil {
		return err
	}
	if prefix == "" {
		prefix = defaultKeyPrefix
	} else if prefix = backend.Clean(prefix); prefix == "" {
		return fmt.Errorf("key_prefix: must name a KV path, got %q", s.KeyPrefix)
	} else if err := checkKey(prefix); err != nil {
		return fmt.Errorf("key_prefix: %q: %w", s.KeyPrefix, err)
	}
	s.prefix = prefix
	if s.TLS.On() {
		if c.scheme != "https" {
			return fmt.Errorf("tls: needs scheme https, got %q", c.scheme)
		}
		if c.tls, c.tlsKey, err = s.TLS.ClientConfig(); err != nil {
			return err
		}
	}
	s.timeout = time.Duration(s.Timeout)
	if s.timeout == 0 {
		s.timeout = defaultTimeout
	}
	if s.timeout < 0 {
		return fmt.Errorf("timeout: must be positive, got %s", s.timeout)
	}
	c.timeout = s.timeout

	if s.rt, err = s.Options.Provision(); err != nil {
		return err
	}
	if s.rt.Lease < 2*minSessionTTL || s.rt.Lease > 2*maxSessionTTL {
		return fmt.Errorf("lock_lease: must be between %s and %s for consul (its session TTL, half the lease, must be 10s to 24h), got %s",
			2*minSessionTTL, 2*maxSessionTTL, s.rt.Lease)
	}
	s.ttl = s.rt.Lease / 2
	if s.rt.Refresh > s.ttl {
		return fmt.Errorf("lock_refresh: must be at most half of lock_lease (%s) for consul, got %s", s.ttl, s.rt.Refresh)
	}
	s.conn = c
	s.poolKey = c.key()
	s.st = new(state)
	s.owner = ownerInfo()
	return nil
}

// Cleanup releases the shared client. Locks this instance still holds stay
// held (and renewed) until unlocked: an old config's operations may still
// be running while a new config starts.
func (s *Storage) Cleanup() error {
	return s.release()
}

// release drops this instance's reference to the pooled client, once.
func (s *Storage) release() error {
	if s.st == nil || s.client == nil {
		return nil
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if s.st.released {
		return nil
	}
	s.st.released = true
	return clients.Release(s.poolKey)
}

// CertMagicStorage returns the storage for certmagic.
func (s *Storage) CertMagicStorage() (certmagic.Storage, error) {
	return s, nil
}

// String describes the storage without its token or encryption key
// (certmagic logs storage values).
func (s *Storage) String() string {
	addr, scheme, prefix := s.conn.address, s.conn.scheme, s.prefix
	if addr == "" { // not provisioned: show what was configured
		addr, scheme, prefix = s.Address, s.Scheme, s.KeyPrefix
		if strings.Contains(addr, "{") {
			addr = "(placeholder)"
		}
	}
	if addr == "" {
		addr = defaultAddress
	}
	if scheme == "" {
		scheme = "http"
	}
	if prefix == "" {
		prefix = defaultKeyPrefix
	}
	var b strings.Builder
	fmt.Fprintf(&b, "consul storage at %s://%s, key_prefix %q", scheme, addr, prefix)
	if s.Datacenter != "" {
		fmt.Fprintf(&b, ", datacenter %q", s.Datacenter)
	}
	if s.Token != "" {
		b.WriteString(", token redacted")
	}
	if s.EncryptionKey != "" {
		b.WriteString(", encrypted (key redacted)")
	}
	return b.String()
}

// connSettings are the normalised connection settings; equal settings
// share one client.
type connSettings struct {
	address, scheme, token           string
	datacenter, namespace, partition string
	tls                              *tls.Config // nil: defaults
	tlsKey                           string      // fingerprint of tls
	timeout                          time.Duration
}

// key returns the pool key: a hash, so the token is not kept in it.
func (c connSettings) key() string {
	h := sha256.New()
	for _, f := range []string{
		c.address, c.scheme, c.token, c.datacenter, c.namespace, c.partition,
		c.tlsKey, c.timeout.String(),
	} {
		h.Write([]byte(strconv.Itoa(len(f))))
		h.Write([]byte{':'})
		h.Write([]byte(f))
	}
	return "acme_consul:" + hex.EncodeToString(h.Sum(nil))
}

// pooledClient is a Consul client shared by storage instances with the
// same connection settings.
type pooledClient struct {
	api       *api.Client
	transport *http.Transport
}

// Destruct closes the idle connections; the client stays usable, so an
// instance still finishing work after its config was unloaded keeps
// working.
func (c *pooledClient) Destruct() error {
	c.transport.CloseIdleConnections()
	return nil
}

// newClient builds a client for c. It makes no request (api.NewClient
// makes none either).
func newClient(c connSettings) (*pooledClient, error) {
	dialer := &net.Dialer{Timeout: c.timeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   c.timeout,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   100,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
		DisableCompression:    onLoopback(c.address),
	}
	if c.scheme == "https" {
		host, _, _ := net.SplitHostPort(c.address)
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.tls != nil {
			cfg = c.tls.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		transport.TLSClientConfig = cfg
	}
	client, err := api.NewClient(&api.Config{
		Address:    c.address,
		Scheme:     c.scheme,
		Datacenter: c.datacenter,
		Namespace:  c.namespace,
		Partition:  c.partition,
		Token:      c.token,
		Transport:  transport,
		HttpClient: &http.Client{Transport: &settingsTransport{base: transport, settings: c}},
	})
	if err != nil {
		return nil, err
	}
	return &pooledClient{api: client, transport: transport}, nil
}

// onLoopback reports whether address (host:port) is on the loopback
// interface: "localhost" or a loopback IP, the usual local agent. Its
// responses are asked for without gzip (newClient): there is no bandwidth
// to save on the loopback, and compressing a batch of certificates costs
// Consul's CPU and decompressing it this process's, on the same machine (a
// renewal scan of 10 000 certificates took 0.96–1.15 s without it instead
// of 1.06–1.51 s, BENCHMARKS.md). To a remote Consul, responses may be
// compressed as Go's HTTP client asks by default.
func onLoopback(address string) bool {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// settingsTransport makes the configuration the only source of the token,
// namespace and partition: api.NewClient fills settings left empty from
// Consul's environment variables (CONSUL_HTTP_TOKEN, CONSUL_NAMESPACE, …),
// which this removes again.
type settingsTransport struct {
	base     http.RoundTripper
	settings connSettings
}

func (t *settingsTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := t.settings
	strip := (c.token == "" && req.Header.Get("X-Consul-Token") != "")
	q := req.URL.Query()
	if (c.namespace == "" && q.Has("ns")) || (c.partition == "" && q.Has("partition")) {
		strip = true
	}
	if !strip {
		return t.base.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	if c.token == "" {
		r.Header.Del("X-Consul-Token")
	}
	if c.namespace == "" {
		q.Del("ns")
	}
	if c.partition == "" {
		q.Del("partition")
	}
	r.URL.RawQuery = q.Encode()
	return t.base.RoundTrip(r)
}

// ownerInfo describes this process for the value of the lock keys it holds.
func ownerInfo() string {
	host, _ := os.Hostname()
	return fmt.Sprintf(`{"holder":%q,"pid":%d,"instance":%q}`, host, os.Getpid(), backend.Token()[:12])
}

// clients is the pool of Consul clients shared across config reloads.
var clients = backend.NewPool[*pooledClient]()

const (
	defaultAddress   = "127.0.0.1:8500"
	defaultKeyPrefix = "caddy-acme"
	defaultTimeout   = 10 * time.Second
	minSessionTTL    = 10 * time.Second
	maxSessionTTL    = 24 * time.Hour
)

// Interface guards
var (
	_ caddy.Module               = (*Storage)(nil)
	_ caddy.Provisioner          = (*Storage)(nil)
	_ caddy.CleanerUpper         = (*Storage)(nil)
	_ caddy.StorageConverter     = (*Storage)(nil)
	_ certmagic.Storage          = (*Storage)(nil)
	_ certmagic.TryLocker        = (*Storage)(nil)
	_ certmagic.LockLeaseRenewer = (*Storage)(nil)
	_ fmt.Stringer               = (*Storage)(nil)
	_ caddy.Destructor           = (*pooledClient)(nil)
)
