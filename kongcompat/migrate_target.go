package kongcompat

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/allowlist"
	"github.com/acmekit/caddy-acme/internal/directory"
)

// targetConfig is the part of a Caddy config the migration reads: the
// global storage and the acme app.
type targetConfig struct {
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`
	Apps       struct {
		ACME *targetApp `json:"acme"`
	} `json:"apps"`
}

// targetApp is the part of the acme app (caddyacme.App) the migration
// reads.
type targetApp struct {
	AccountEmail         string          `json:"account_email"`
	APIURI               string          `json:"api_uri,omitempty"`
	Domains              []string        `json:"domains,omitempty"`
	AllowAnyDomain       bool            `json:"allow_any_domain,omitempty"`
	EnableIPv4CommonName *bool           `json:"enable_ipv4_common_name,omitempty"`
	AccountKey           string          `json:"account_key,omitempty"`
	TrustedRoots         []string        `json:"trusted_roots,omitempty"`
	StorageRaw           json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`
}

// target is the acme app the data goes to: its storage, provisioned as
// Caddy provisions it, and the certmagic ACME issuer its settings give,
// whose IssuerKey decides the storage keys.
type target struct {
	storage     certmagic.Storage
	storageName string // for the report
	directory   string
	email       string
	accountKey  string // the app's account_key, placeholders expanded ("" if unset)
	roots       *x509.CertPool
	matcher     *allowlist.Matcher
	allowAny    bool
	ipv4        bool

	cache  *certmagic.Cache
	issuer *certmagic.ACMEIssuer
}

// openTarget provisions the target's storage in ctx (a Caddy context
// whose cancellation cleans the module up) and builds its issuer.
func openTarget(ctx caddy.Context, cfgJSON []byte) (*target, error) {
	var cfg targetConfig
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return nil, fmt.Errorf("reading the Caddy config: %w", err)
	}
	app := cfg.Apps.ACME
	if app == nil {
		return nil, errors.New("the Caddy config has no acme app (apps.acme): the migration writes into the acme app's storage, with its api_uri and account_email")
	}
	t := &target{allowAny: app.AllowAnyDomain, ipv4: app.EnableIPv4CommonName == nil || *app.EnableIPv4CommonName}
	var err error
	if t.email, err = expand("account_email", app.AccountEmail); err != nil {
		return nil, fmt.Errorf("acme app: %w", err)
	}
	if t.email == "" {
		return nil, errors.New("acme app: account_email: required")
	}
	if t.directory, err = directory.URL(app.APIURI); err != nil {
		return nil, fmt.Errorf("acme app: %w", err)
	}
	if app.AccountKey != "" {
		if t.accountKey, err = expand("account_key", app.AccountKey); err != nil {
			return nil, fmt.Errorf("acme app: %w", err)
		}
	}
	if t.matcher, err = allowlist.New(app.Domains); err != nil {
		return nil, fmt.Errorf("acme app: domains: %w", err)
	}
	if len(app.TrustedRoots) > 0 {
		t.roots = x509.NewCertPool()
		for _, file := range app.TrustedRoots {
			pemBytes, err := os.ReadFile(file)
			if err != nil {
				return nil, fmt.Errorf("acme app: trusted_roots: %w", err)
			}
			if !t.roots.AppendCertsFromPEM(pemBytes) {
				return nil, fmt.Errorf("acme app: trusted_roots: %s holds no PEM certificate", file)
			}
		}
	}

	// the app's storage, else Caddy's global storage, else the default
	var holder any
	switch {
	case app.StorageRaw != nil:
		holder, t.storageName = app, "the acme app's storage "+moduleName(app.StorageRaw)
	case cfg.StorageRaw != nil:
		holder, t.storageName = &cfg, "Caddy's global storage "+moduleName(cfg.StorageRaw)
	}
	if holder != nil {
		val, err := ctx.LoadModule(holder, "StorageRaw")
		if err != nil {
			return nil, fmt.Errorf("loading the target storage: %w", err)
		}
		if t.storage, err = val.(caddy.StorageConverter).CertMagicStorage(); err != nil {
			return nil, fmt.Errorf("the target storage: %w", err)
		}
	} else {
		t.storage, t.storageName = caddy.DefaultStorage, "Caddy's default storage (file_system "+caddy.DefaultStorage.Path+")"
	}

	t.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) {
			return nil, errors.New("no certificates are cached")
		},
		Logger: zap.NewNop(),
	})
	if t.issuer, err = t.newIssuer(ctx, t.storage); err != nil {
		return nil, err
	}
	return t, nil
}

// newIssuer returns the app's ACME issuer over storage s (the target's,
// or a wrapper of it), with its account email set as certmagic sets it
// before it looks an account up (PreCheck).
func (t *target) newIssuer(ctx context.Context, s certmagic.Storage) (*certmagic.ACMEIssuer, error) {
	magic := certmagic.New(t.cache, certmagic.Config{Storage: s, Logger: zap.NewNop()})
	iss := certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{
		CA:                      t.directory,
		TestCA:                  t.directory,
		Email:                   t.email,
		Agreed:                  true,
		TrustedRoots:            t.roots,
		DisableTLSALPNChallenge: true,
		Logger:                  zap.NewNop(),
	})
	if err := iss.PreCheck(ctx, nil, false); err != nil {
		return nil, fmt.Errorf("preparing the ACME issuer: %w", err)
	}
	return iss, nil
}

func (t *target) close() {
	if t.cache != nil {
		t.cache.Stop()
	}
}

// allowed reports whether the app serves host, as its handshakes decide:
// the IPv4 rule, then allow_any_domain, then domains.
func (t *target) allowed(host string) bool {
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil && !t.ipv4 {
		return false
	}
	return t.allowAny || t.matcher.Match(host)
}

func moduleName(raw json.RawMessage) string {
	var m struct {
		Module string `json:"module"`
	}
	_ = json.Unmarshal(raw, &m)
	return m.Module
}

// probeStorage is the target storage as certmagic's account lookup sees
// it during a probe: reads go through (even with the probe's context
// cancelled, which keeps the lookup from reaching the CA), the first
// read is recorded, and writes are refused.
type probeStorage struct {
	certmagic.Storage

	mu        sync.Mutex // protects first
	first     string     // key of the first Load
	firstData []byte
	firstErr  error
	loaded    bool
}

var errProbeWrite = errors.New("probe: no writes")

func (p *probeStorage) Load(ctx context.Context, key string) ([]byte, error) {
	data, err := p.Storage.Load(context.WithoutCancel(ctx), key)
	p.mu.Lock()
	if !p.loaded {
		p.loaded, p.first, p.firstData, p.firstErr = true, key, data, err
	}
	p.mu.Unlock()
	return data, err
}

func (p *probeStorage) Store(context.Context, string, []byte) error { return errProbeWrite }
func (p *probeStorage) Delete(context.Context, string) error        { return errProbeWrite }
func (p *probeStorage) Lock(context.Context, string) error          { return errProbeWrite }

// bufferStorage is the target storage with writes held back: reads see
// them, the target does not until flush.
type bufferStorage struct {
	certmagic.Storage
	hide string // a key that reads as absent until written

	mu     sync.Mutex // protects writes and order
	writes map[string][]byte
	order  []string
}

func (b *bufferStorage) Load(ctx context.Context, key string) ([]byte, error) {
	b.mu.Lock()
	v, ok := b.writes[key]
	b.mu.Unlock()
	switch {
	case ok:
		return v, nil
	case key == b.hide:
		return nil, fs.ErrNotExist
	}
	return b.Storage.Load(ctx, key)
}

func (b *bufferStorage) Store(_ context.Context, key string, value []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.writes == nil {
		b.writes = make(map[string][]byte)
	}
	if _, ok := b.writes[key]; !ok {
		b.order = append(b.order, key)
	}
	b.writes[key] = value
	return nil
}

func (b *bufferStorage) Delete(context.Context, string) error { return errProbeWrite }

// storeAll writes the key-value pairs in order, deleting those already
// written if one fails (as certmagic's storeTx does).
func storeAll(ctx context.Context, s certmagic.Storage, keys []string, values [][]byte) error {
	for i, k := range keys {
		if err := s.Store(ctx, k, values[i]); err != nil {
			for _, done := range keys[:i] {
				_ = s.Delete(context.WithoutCancel(ctx), done)
			}
			return fmt.Errorf("writing %s: %w", k, err)
		}
	}
	return nil
}

// lowerEqual compares email addresses as certmagic's account keys do.
func lowerEqual(a, b string) bool { return strings.EqualFold(a, b) }
