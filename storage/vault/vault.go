// Package vault is the caddy.storage.acme_vault module: certmagic storage
// in a HashiCorp Vault KV version 2 secrets engine, with locks built on the
// engine's check-and-set versions, for a cluster of Caddy instances that
// share certificates (Kong's `vault` storage for its acme plugin).
package vault

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

func init() {
	caddy.RegisterModule(Storage{})
}

// Storage keeps certmagic's data in a Vault KV version 2 secrets engine:
// the value of the certmagic key `a/b/c` is the secret
// `<mount>/data/<path_prefix>/a/b/c`, in its `value` field (UTF-8 text as
// is, so certificates read naturally in the Vault UI and CLI; anything else,
// including encrypted values, base64 with `"encoding": "base64"`). Load
// and Stat of a value are one HTTP round trip each; Modified is the creation time
// of the secret's current version. Directories are Vault's folders: List is
// a LIST of one folder (Vault lists one level), so its cost depends on the
// folder, not on the total; Delete removes every version of a secret (its
// metadata) and, for a folder, everything under it.
//
// Store checks that the key is neither below a value nor a folder (the
// folders above it and its own folder, read at once), then writes. A node
// remembers the current version of up to 4 096 keys it stored or loaded
// (backend.Known) and overwrites such a key with one write, check-and-set
// on that version, with no check first: a key still at that version is a
// value, unchanged since, so nothing can lie below it nor above it. If
// another node changed or removed the key meanwhile, Vault refuses the
// write and Store takes the full path. One case escapes this: a current
// version soft-deleted behind the storage's back (`vault kv delete`, or a
// mount's delete_version_after) still matches, so a key soft-deleted that
// way and then used as a folder by another node would be written over it.
//
// Overwriting a key keeps the older versions up to the mount's
// max_versions (10 by default), as Vault does for every secret; set
// `max_versions` on the mount (`vault write <mount>/config max_versions=1`)
// if old private keys should not linger. Mounts with cas_required are not
// supported.
//
// Locks. A lock is the secret `<mount>/data/<lock_prefix>/<name>`, whose
// current version holds the owner's random token. Its metadata sets
// delete_version_after to lock_lease (rounded up to whole seconds, as Vault
// keeps it), so Vault itself soft-deletes every version that long after it
// was written, by Vault's clock: no clocks of Caddy instances are compared. A lock is held while its current version is
// readable and carries a token. To acquire, an instance writes its token
// with check-and-set on the current version number (0 for a new lock), so
// of several instances that see the lock free exactly one succeeds; while
// holding it, it writes a new version every lock_refresh (check-and-set
// again, after checking the token is still its own); to unlock, it
// check-and-set writes a version without a token, and only if the current
// version is its own. A waiting Lock polls, since Vault has no change
// notification for KV: every tenth of the time waited so far, at least every
// 10ms and at most every min(lock_lease/10, 100ms), with ±20% jitter — a
// lock released soon is handed over within about 10ms, one released after a
// long wait within about 100ms, and a long wait costs at most ten reads a
// second.
//
// Failure modes: an instance that crashes (or loses Vault) while holding a
// lock loses it lock_lease after its last refresh, and another instance then
// takes it over. An instance that cannot refresh for longer than lock_lease
// (a network partition) loses the lock although it still runs, as with every
// lease; it logs the failed refreshes and its Unlock reports the loss. All
// instances must use the same lock_lease: the metadata of a lock carries
// one, set by whoever acquires it. One small lock secret per lock name (its
// metadata; every version expires) stays in Vault after use; it may be
// deleted whenever no Caddy instance runs.
//
// Authentication happens on the first storage operation, never in
// Provision, so `caddy adapt` and `caddy validate` work offline. A token
// that can be renewed is renewed in the background while the client is in
// use; a token from kubernetes or approle login is replaced by logging in
// again before it expires, and also when Vault answers 403 for a token that
// may have been revoked. Clients are shared by every instance with the same
// connection and authentication settings, across config reloads. VAULT_*
// environment variables are ignored: everything comes from this config
// (use placeholders such as {env.VAULT_TOKEN}).
//
// Caddyfile:
//
//	storage acme_vault {
//		address <url>
//		mount <kv-v2-mount>
//		path_prefix <folder>
//		lock_prefix <folder>
//		namespace <namespace>
//		auth_method token|token_file|kubernetes|approle
//		token <token>
//		token_file <path>
//		role <kubernetes-role>
//		jwt_path <path>
//		auth_mount <path>
//		role_id <approle-role-id>
//		secret_id <approle-secret-id>
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
	// The URL of the Vault server, `http://` or `https://` with host and
	// port. Placeholders are expanded. Default: `https://127.0.0.1:8200`.
	Address string `json:"address,omitempty"`

	// The path of the KV version 2 secrets engine (Kong's first kv_path
	// segment). Default: `secret`.
	Mount string `json:"mount,omitempty"`

	// The folder inside the mount that holds the certmagic keys (Kong's
	// kv_path without its mount). It must not be empty: a mount's root is
	// shared with other secrets. Default: `caddy-acme`.
	PathPrefix string `json:"path_prefix,omitempty"`

	// The folder inside the mount that holds the locks; it must lie outside
	// path_prefix (and path_prefix outside it), so locks never show among
	// the keys. Default: path_prefix followed by `-locks`.
	LockPrefix string `json:"lock_prefix,omitempty"`

	// The Vault Enterprise or HCP Vault namespace, sent as the
	// X-Vault-Namespace header with every request (logins too).
	// Placeholders are expanded. Default: none (the root namespace).
	Namespace string `json:"namespace,omitempty"`

	// How the storage authenticates: `token` (the token field), `token_file`
	// (a file holding a token, such as a Vault Agent sink; read again when
	// Vault rejects the token or it expires), `kubernetes` (log in at
	// auth/<auth_mount>/login with the service account JWT from jwt_path and
	// role, as Kong does) or `approle` (log in with role_id and secret_id).
	// Default: `token`.
	AuthMethod string `json:"auth_method,omitempty"`

	// The Vault token for auth_method `token`. A secret: use a placeholder
	// such as {env.VAULT_TOKEN} or {file./run/secrets/vault-token}; it never
	// appears in logs or errors. REQUIRED for auth_method `token`.
	Token string `json:"token,omitempty"`

	// The file holding the Vault token for auth_method `token_file`, read
	// on first use and again whenever Vault rejects the token or it is
	// about to expire. Placeholders are expanded. REQUIRED for that method.
	TokenFile string `json:"token_file,omitempty"`

	// The role to log in as, for auth_method `kubernetes` (Kong's
	// auth_role). Placeholders are expanded. REQUIRED for that method.
	Role string `json:"role,omitempty"`

	// The file holding the Kubernetes service account JWT for auth_method
	// `kubernetes`, read at every login (projected tokens rotate).
	// Default: `/var/run/secrets/kubernetes.io/serviceaccount/token`.
	JWTPath string `json:"jwt_path,omitempty"`

	// The path the auth method is mounted at, for auth_method `kubernetes`
	// (Kong's auth_path) or `approle`. Default: `kubernetes` or `approle`.
	AuthMount string `json:"auth_mount,omitempty"`

	// The AppRole role ID for auth_method `approle`. Placeholders are
	// expanded. REQUIRED for that method.
	RoleID string `json:"role_id,omitempty"`

	// The AppRole secret ID for auth_method `approle`; leave it empty for a
	// role that does not bind one. A secret: use a placeholder; it never
	// appears in logs or errors. Default: none.
	SecretID string `json:"secret_id,omitempty"`

	// TLS settings for an `https://` address (an error with an `http://`
	// one, unless enabled is false). server_name is Kong's
	// tls_server_name; cert_file and key_file give a client certificate,
	// for a listener with tls_require_and_verify_client_cert (Vault's cert
	// auth method is not used). Default: verify Vault's certificate
	// against the system's trusted roots, for the host of address.
	TLS *backend.TLS `json:"tls,omitempty"`

	// How long one request to Vault may take, including reading its
	// response. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	backend.Options

	mount      string
	prefix     string
	lockPrefix string
	clientKey  string
	cfg        clientConfig
	rt         backend.Runtime
	client     *client
	logger     *zap.Logger
	held       *backend.Held
	own        *nameLocks
	known      *backend.Known // versions of values this node wrote or read (Store's overwrite)
	holder     string
	released   bool
}

// CaddyModule returns the Caddy module information.
func (Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.acme_vault",
		New: func() caddy.Module { return new(Storage) },
	}
}

// Provision checks the configuration, expands placeholders and gets the
// shared client for these settings. It does no network I/O.
func (s *Storage) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	cfg, err := s.settings()
	if err != nil {
		return err
	}
	rt, err := s.Options.Provision()
	if err != nil {
		return err
	}
	s.rt = rt
	s.cfg = cfg
	s.clientKey = cfg.key()
	s.holder = holderName()
	s.held = new(backend.Held)
	s.own = new(nameLocks)
	s.known = new(backend.Known)
	c, err := clients.Acquire(s.clientKey, func() (*client, error) {
		return newClient(cfg, s.logger)
	})
	if err != nil {
		return fmt.Errorf("creating vault client: %w", err)
	}
	s.client = c
	return nil
}

// settings checks the fields and expands their placeholders. Errors name
// the field and never contain a secret.
func (s *Storage) settings() (clientConfig, error) {
	var cfg clientConfig
	var err error
	for _, f := range []struct {
		name   string
		in     string
		out    *string
		expand func(field, v string) (string, error)
	}{
		{"address", s.Address, &cfg.address, placeholder.Expand},
		{"mount", s.Mount, &s.mount, placeholder.Expand},
		{"path_prefix", s.PathPrefix, &s.prefix, placeholder.Expand},
		{"lock_prefix", s.LockPrefix, &s.lockPrefix, placeholder.Expand},
		{"namespace", s.Namespace, &cfg.namespace, placeholder.Expand},
		{"auth_method", s.AuthMethod, &cfg.auth.method, placeholder.Expand},
		{"token", s.Token, &cfg.auth.token, placeholder.ExpandSecret},
		{"token_file", s.TokenFile, &cfg.auth.tokenFile, placeholder.Expand},
		{"role", s.Role, &cfg.auth.role, placeholder.Expand},
		{"jwt_path", s.JWTPath, &cfg.auth.jwtPath, placeholder.Expand},
		{"auth_mount", s.AuthMount, &cfg.auth.mount, placeholder.Expand},
		{"role_id", s.RoleID, &cfg.auth.roleID, placeholder.ExpandSecret},
		{"secret_id", s.SecretID, &cfg.auth.secretID, placeholder.ExpandSecret},
	} {
		if *f.out, err = f.expand(f.name, f.in); err != nil {
			return cfg, err
		}
	}

	if cfg.address == "" {
		cfg.address = defaultAddress
	}
	u, err := url.Parse(cfg.address)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return cfg, fmt.Errorf("address: want an http:// or https:// URL with a host and nothing after it, such as https://vault.internal:8200, got %q", redactURL(cfg.address))
	}
	cfg.address = u.Scheme + "://" + u.Host

	s.mount = strings.Trim(s.mount, "/")
	if s.mount == "" {
		s.mount = defaultMount
	}
	if err := checkPath("mount", s.mount); err != nil {
		return cfg, err
	}
	if s.PathPrefix == "" {
		s.prefix = defaultPathPrefix
	}
	s.prefix = strings.Trim(s.prefix, "/")
	if s.prefix == "" {
		return cfg, errors.New("path_prefix: must not be empty: the keys need a folder of their own inside the mount")
	}
	if err := checkPath("path_prefix", s.prefix); err != nil {
		return cfg, err
	}
	if s.LockPrefix == "" {
		s.lockPrefix = s.prefix + "-locks"
	}
	s.lockPrefix = strings.Trim(s.lockPrefix, "/")
	if s.lockPrefix == "" {
		return cfg, errors.New("lock_prefix: must not be empty")
	}
	if err := checkPath("lock_prefix", s.lockPrefix); err != nil {
		return cfg, err
	}
	if s.lockPrefix == s.prefix || backend.Under(s.prefix, s.lockPrefix) || backend.Under(s.lockPrefix, s.prefix) {
		return cfg, fmt.Errorf("lock_prefix: %q must lie outside path_prefix %q and the other way round", s.lockPrefix, s.prefix)
	}

	a := &cfg.auth
	if a.method == "" {
		a.method = authToken
	}
	allowed := map[string][]string{
		authToken:      {"token"},
		authTokenFile:  {"token_file"},
		authKubernetes: {"role", "jwt_path", "auth_mount"},
		authAppRole:    {"role_id", "secret_id", "auth_mount"},
	}
	ok := allowed[a.method]
	if ok == nil {
		return cfg, fmt.Errorf("auth_method: want token, token_file, kubernetes or approle, got %q", a.method)
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"token", a.token != ""},
		{"token_file", a.tokenFile != ""},
		{"role", a.role != ""},
		{"jwt_path", a.jwtPath != ""},
		{"auth_mount", a.mount != ""},
		{"role_id", a.roleID != ""},
		{"secret_id", a.secretID != ""},
	} {
		if f.set && !slices.Contains(ok, f.name) {
			return cfg, fmt.Errorf("%s: not used by auth_method %s", f.name, a.method)
		}
	}
	switch a.method {
	case authToken:
		if a.token == "" {
			return cfg, errors.New("token: required for auth_method token (use a placeholder such as {env.VAULT_TOKEN})")
		}
		if strings.ContainsAny(a.token, " \t\r\n") {
			return cfg, errors.New("token: contains white space")
		}
	case authTokenFile:
		if a.tokenFile == "" {
			return cfg, errors.New("token_file: required for auth_method token_file")
		}
	case authKubernetes:
		if a.role == "" {
			return cfg, errors.New("role: required for auth_method kubernetes")
		}
		if a.jwtPath == "" {
			a.jwtPath = defaultJWTPath
		}
		if a.mount == "" {
			a.mount = authKubernetes
		}
	case authAppRole:
		if a.roleID == "" {
			return cfg, errors.New("role_id: required for auth_method approle")
		}
		if a.mount == "" {
			a.mount = authAppRole
		}
	}
	a.mount = strings.Trim(a.mount, "/")
	if err := checkPath("auth_mount", a.mount); a.mount != "" && err != nil {
		return cfg, err
	}

	cfg.timeout = time.Duration(s.Timeout)
	if cfg.timeout == 0 {
		cfg.timeout = defaultTimeout
	}
	if cfg.timeout < 0 {
		return cfg, fmt.Errorf("timeout: must be positive, got %s", cfg.timeout)
	}

	if s.TLS.On() {
		if u.Scheme != "https" {
			return cfg, errors.New("tls: set, but address is not https://")
		}
		if cfg.tls, cfg.tlsKey, err = s.TLS.ClientConfig(); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// checkKey rejects keys (and lock names) that Vault's client would not
// send as they are: the path of a request is cleaned, so `a/../b` would
// address `b`, outside the key's folder; and keys that are not UTF-8,
// which Vault refuses and JSON cannot list.
func checkKey(key string) error {
	return backend.CheckKey(key)
}

// checkNonEmpty is checkKey that also rejects the root.
func checkNonEmpty(key string) error {
	if key == "" {
		return errEmptyKey
	}
	return checkKey(key)
}

// checkPath rejects Vault paths with empty, `.` or `..` components.
func checkPath(field, p string) error {
	for c := range strings.SplitSeq(p, "/") {
		if c == "" || c == "." || c == ".." {
			return fmt.Errorf("%s: %q has an empty, '.' or '..' path component", field, p)
		}
	}
	return nil
}

// Cleanup releases this instance's use of the shared client. Locks it holds
// stay held (and refreshed) until they are unlocked: an instance of an old
// config may still be finishing an operation.
func (s *Storage) Cleanup() error {
	if s.client == nil || s.released {
		return nil
	}
	s.released = true
	return clients.Release(s.clientKey)
}

// CertMagicStorage returns the storage itself.
func (s *Storage) CertMagicStorage() (certmagic.Storage, error) {
	return s, nil
}

// String describes the storage without any secret.
func (s *Storage) String() string {
	if s == nil {
		return "acme_vault(nil)"
	}
	addr := s.Address
	if s.client != nil {
		addr = s.cfg.address
	}
	method := s.AuthMethod
	if method == "" {
		method = authToken
	}
	enc := "none"
	if s.EncryptionKey != "" {
		enc = "aes-256-gcm (key redacted)"
	}
	return fmt.Sprintf("acme_vault(address=%s mount=%s path_prefix=%s namespace=%s auth_method=%s encryption=%s)",
		redactURL(addr), s.Mount, s.PathPrefix, s.Namespace, method, enc)
}

// MarshalLogObject logs what String shows, as fields (certmagic logs the
// storage with zap.Any).
func (s *Storage) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("module", "acme_vault")
	enc.AddString("address", redactURL(s.Address))
	enc.AddString("mount", s.Mount)
	enc.AddString("path_prefix", s.PathPrefix)
	enc.AddString("namespace", s.Namespace)
	enc.AddString("auth_method", s.AuthMethod)
	enc.AddBool("encrypted", s.EncryptionKey != "")
	return nil
}

// Store puts value at key, replacing what was there: one write.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	key = backend.Clean(key)
	if err := checkNonEmpty(key); err != nil {
		return fmt.Errorf("storing %q: %w", key, err)
	}
	data := encodeValue(s.rt.Sealer.Seal(key, value))
	if v, ok := s.known.Get(key); ok {
		// overwrite: key still at version v is a value, unchanged since,
		// so the conflict check has nothing to find (backend.Known)
		err := s.write(ctx, key, data, int(v))
		if !errors.Is(err, errCASMismatch) {
			return err
		}
		s.known.Forget(key)
	}
	if err := s.checkConflict(ctx, key); err != nil {
		return err
	}
	return s.write(ctx, key, data, -1)
}

// write writes data as key's next version, with check-and-set on version
// cas unless cas < 0 (errCASMismatch: key is no longer at version cas),
// and remembers the version written.
func (s *Storage) write(ctx context.Context, key string, data any, cas int) error {
	req := writeRequest{Data: data}
	if cas >= 0 {
		req.Options = &writeOptions{CAS: cas}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	defer cancel()
	var resp writeResponse
	status, err := s.client.call(ctx, http.MethodPut, s.dataPath(key), nil, body, &resp)
	if cas >= 0 && isCASMismatch(err) {
		return errCASMismatch
	}
	if err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	if status == http.StatusNotFound || resp.Data.Version == 0 {
		return fmt.Errorf("storing %s: %s is not a KV version 2 mount (a write returned no version)", key, s.mount)
	}
	s.known.Set(key, uint64(resp.Data.Version))
	return nil
}

// checkConflict refuses to store key below a value (backend.ErrUnderValue)
// or over a folder (backend.ErrIsDir), as Caddy's file storage does: it
// reads each folder above key and lists key's own folder (empty unless key
// is a folder), all at once, so a Store waits one more round trip. It is a
// check before the write, not a transaction with it: two nodes storing "a"
// and "a/b" at the same moment can both succeed.
func (s *Storage) checkConflict(ctx context.Context, key string) error {
	parents := backend.Parents(key)
	values := make([]bool, len(parents))
	errs := make([]error, len(parents)+1)
	var folder bool
	var wg sync.WaitGroup
	for i, p := range parents {
		wg.Go(func() { values[i], errs[i] = s.isValue(ctx, p) })
	}
	wg.Go(func() { _, folder, errs[len(parents)] = s.list(ctx, key) })
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	for i, p := range parents {
		if values[i] {
			return backend.ErrUnderValue(key, p)
		}
	}
	if folder {
		return backend.ErrIsDir(key)
	}
	return nil
}

// isValue reports whether key holds a value (its current version is not
// deleted), without decoding it.
func (s *Storage) isValue(ctx context.Context, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	defer cancel()
	var resp readResponse
	status, err := s.client.call(ctx, http.MethodGet, s.dataPath(key), nil, nil, &resp)
	if err != nil {
		return false, err
	}
	return status != http.StatusNotFound && resp.Data.Data != nil, nil
}

// Load returns the value at key, or an error wrapping fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	key = backend.Clean(key)
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("loading %q: %w", key, err)
	}
	value, _, err := s.load(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", key, err)
	}
	return value, nil
}

// load reads the current version of key: one read.
func (s *Storage) load(ctx context.Context, key string) ([]byte, time.Time, error) {
	if key == "" {
		return nil, time.Time{}, fs.ErrNotExist
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	defer cancel()
	var resp readResponse
	status, err := s.client.call(ctx, http.MethodGet, s.dataPath(key), nil, nil, &resp)
	if err != nil {
		return nil, time.Time{}, err
	}
	if status == http.StatusNotFound || resp.Data.Data == nil {
		return nil, time.Time{}, fs.ErrNotExist
	}
	raw, err := resp.Data.Data.decode()
	if err != nil {
		return nil, time.Time{}, err
	}
	value, err := s.rt.Sealer.Open(key, raw)
	if err != nil {
		return nil, time.Time{}, err
	}
	s.known.Set(key, uint64(max(resp.Data.Metadata.Version, 0)))
	return value, resp.Data.Metadata.CreatedTime, nil
}

// Delete removes key with all its versions and, if it is a folder,
// everything under it. A missing key is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	key = backend.Clean(key)
	if err := checkKey(key); err != nil {
		return fmt.Errorf("deleting %q: %w", key, err)
	}
	if err := s.delete(ctx, key); err != nil {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	return nil
}

// delete removes key and everything below it: the secret at key and the
// listing of its children at once (neither depends on the other), then
// each child.
func (s *Storage) delete(ctx context.Context, key string) error {
	var delErr error
	var wg sync.WaitGroup
	if key != "" {
		wg.Go(func() { delErr = s.deleteSecret(ctx, key) })
	}
	entries, found, err := s.list(ctx, key)
	wg.Wait()
	if err = errors.Join(delErr, err); err != nil || !found {
		return err
	}
	for _, e := range entries {
		child, folder, ok := entryKey(key, e)
		switch {
		case !ok:
			continue
		case folder:
			err = s.delete(ctx, child)
		default:
			err = s.deleteSecret(ctx, child)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// deleteSecret removes every version of one secret.
func (s *Storage) deleteSecret(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	defer cancel()
	_, err := s.client.call(ctx, http.MethodDelete, s.metaPath(s.prefix, key), nil, nil, nil)
	return err
}

// Exists reports whether key is a value or a folder with something in it.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// List returns the full keys under prefix: its direct children (values and
// folders) or, if recursive, every key and folder below it. A value has no
// children; a missing prefix is fs.ErrNotExist.
func (s *Storage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	prefix = backend.Clean(prefix)
	if err := checkKey(prefix); err != nil {
		return nil, fmt.Errorf("listing %q: %w", prefix, err)
	}
	keys, err := s.walk(ctx, prefix, recursive, true)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", prefix, err)
	}
	return keys, nil
}

func (s *Storage) walk(ctx context.Context, dir string, recursive, top bool) ([]string, error) {
	entries, found, err := s.list(ctx, dir)
	if err != nil {
		return nil, err
	}
	if !found {
		if !top || dir == "" {
			return nil, nil
		}
		// a value has no children; only a missing key is an error
		if _, _, err := s.load(ctx, dir); err != nil {
			return nil, err
		}
		return []string{}, nil
	}
	keys := make([]string, 0, len(entries))
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		child, folder, ok := entryKey(dir, e)
		if !ok {
			continue
		}
		if !seen[child] {
			seen[child] = true
			keys = append(keys, child)
		}
		if recursive && folder {
			sub, err := s.walk(ctx, child, true, false)
			if err != nil {
				return nil, err
			}
			keys = append(keys, sub...)
		}
	}
	return keys, nil
}

// list returns the entries of one folder as Vault lists them (sub-folders
// end in /), and whether the folder exists.
func (s *Storage) list(ctx context.Context, dir string) ([]string, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	defer cancel()
	var resp listResponse
	status, err := s.client.call(ctx, http.MethodGet, s.metaPath(s.prefix, dir), listParams, nil, &resp)
	if err != nil {
		return nil, false, err
	}
	if status == http.StatusNotFound || len(resp.Data.Keys) == 0 {
		return nil, false, nil
	}
	return resp.Data.Keys, true, nil
}

// Stat describes key: a value (IsTerminal, with its size and the time its
// current version was written) or a folder.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = backend.Clean(key)
	if err := checkKey(key); err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %q: %w", key, err)
	}
	info, err := s.stat(ctx, key)
	if err != nil {
		return info, fmt.Errorf("stat %s: %w", key, err)
	}
	return info, nil
}

func (s *Storage) stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if key == "" {
		return certmagic.KeyInfo{Key: key}, nil
	}
	value, modified, err := s.load(ctx, key)
	if err == nil {
		return certmagic.KeyInfo{Key: key, Modified: modified, Size: int64(len(value)), IsTerminal: true}, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return certmagic.KeyInfo{}, err
	}
	_, found, err := s.list(ctx, key)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	if !found {
		return certmagic.KeyInfo{}, fs.ErrNotExist
	}
	return certmagic.KeyInfo{Key: key}, nil
}

// dataPath is the API path (without /v1/) of key's current data.
func (s *Storage) dataPath(key string) string {
	return s.mount + "/data/" + s.prefix + "/" + key
}

// metaPath is the API path of the metadata of key (a folder if key is "")
// inside folder.
func (s *Storage) metaPath(folder, key string) string {
	if key == "" {
		return s.mount + "/metadata/" + folder
	}
	return s.mount + "/metadata/" + folder + "/" + key
}

// entryKey returns the key that an entry of the listing of the folder dir
// names, and whether it is a folder (Vault lists sub-folders with a
// trailing /). An entry that is not one valid name (empty, `.`, `..`,
// containing a /, not UTF-8: not from Vault) is not ok, and skipped.
func entryKey(dir, entry string) (key string, folder, ok bool) {
	name, folder := strings.CutSuffix(entry, "/")
	if name == "" || strings.Contains(name, "/") || checkKey(name) != nil {
		return "", false, false
	}
	return join(dir, name), folder, true
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// holderName identifies this process in lock secrets, for people
// inspecting them.
func holderName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

// redactURL drops user information from a URL-like string.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	u.User = nil
	return u.String()
}

// clientConfig is everything a client is built from; equal configs share
// a client.
type clientConfig struct {
	address   string
	namespace string
	timeout   time.Duration
	tls       *tls.Config // nil: defaults
	tlsKey    string      // fingerprint of tls
	auth      authSettings
}

// key is the pool key of c: a hash, so that secrets are not kept in it.
func (c clientConfig) key() string {
	h := sha256.New()
	for _, v := range []string{
		c.address, c.namespace, c.timeout.String(),
		c.tlsKey,
		c.auth.method, c.auth.token, c.auth.tokenFile, c.auth.role, c.auth.jwtPath,
		c.auth.mount, c.auth.roleID, c.auth.secretID,
	} {
		fmt.Fprintf(h, "%d:%s;", len(v), v)
	}
	return "acme_vault:" + hex.EncodeToString(h.Sum(nil))
}

// tlsConfig returns the client TLS configuration.
func (c clientConfig) tlsConfig() *tls.Config {
	if c.tls == nil {
		return &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return c.tls.Clone()
}

// KV version 2 wire formats.
type (
	// kvValue is the data of a secret that holds a certmagic value.
	kvValue struct {
		Value    *string `json:"value"`
		Encoding string  `json:"encoding,omitempty"`
	}
	writeRequest struct {
		Options *writeOptions `json:"options,omitempty"`
		Data    any           `json:"data"`
	}
	writeOptions struct {
		CAS int `json:"cas"`
	}
	versionMetadata struct {
		CreatedTime  time.Time `json:"created_time"`
		DeletionTime string    `json:"deletion_time"`
		Destroyed    bool      `json:"destroyed"`
		Version      int       `json:"version"`
	}
	writeResponse struct {
		Data versionMetadata `json:"data"`
	}
	readResponse struct {
		Data struct {
			Data     *kvValue        `json:"data"`
			Metadata versionMetadata `json:"metadata"`
		} `json:"data"`
	}
	listResponse struct {
		Data struct {
			Keys []string `json:"keys"`
		} `json:"data"`
	}
)

// encodeValue stores UTF-8 text as it is and anything else as base64.
func encodeValue(b []byte) kvValue {
	if utf8.Valid(b) {
		v := string(b)
		return kvValue{Value: &v}
	}
	v := base64.StdEncoding.EncodeToString(b)
	return kvValue{Value: &v, Encoding: "base64"}
}

func (v *kvValue) decode() ([]byte, error) {
	if v.Value == nil {
		return nil, errors.New(`secret has no "value" field (not written by this storage)`)
	}
	switch v.Encoding {
	case "":
		return []byte(*v.Value), nil
	case "base64":
		b, err := base64.StdEncoding.DecodeString(*v.Value)
		if err != nil {
			return nil, fmt.Errorf("decoding value: %w", err)
		}
		return b, nil
	default:
		return nil, fmt.Errorf("value has unknown encoding %q", v.Encoding)
	}
}

var errEmptyKey = fmt.Errorf("%w: empty key", fs.ErrInvalid)

var listParams = map[string][]string{"list": {"true"}}

const (
	defaultAddress    = "https://127.0.0.1:8200"
	defaultMount      = "secret"
	defaultPathPrefix = "caddy-acme"
	defaultJWTPath    = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	defaultTimeout    = 10 * time.Second
)

// Interface guards
var (
	_ caddy.Provisioner          = (*Storage)(nil)
	_ caddy.CleanerUpper         = (*Storage)(nil)
	_ caddy.StorageConverter     = (*Storage)(nil)
	_ certmagic.Storage          = (*Storage)(nil)
	_ certmagic.TryLocker        = (*Storage)(nil)
	_ certmagic.LockLeaseRenewer = (*Storage)(nil)
	_ fmt.Stringer               = (*Storage)(nil)
	_ zapcore.ObjectMarshaler    = (*Storage)(nil)
)
