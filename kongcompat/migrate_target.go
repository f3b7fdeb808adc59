package kongcompat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/appconfig"
)

// target is the acme app the data goes to: its storage, provisioned as
// Caddy provisions it, its settings, and the ACME issuer the app makes of
// them, whose IssuerKey decides the storage keys.
type target struct {
	storage     certmagic.Storage
	storageName string // for the report
	set         appconfig.Settings

	cache  *certmagic.Cache
	issuer *certmagic.ACMEIssuer
}

// openTarget reads the acme app of a Caddy config as the app does,
// provisions the target's storage in ctx (a Caddy context whose
// cancellation cleans the module up) and builds its issuer.
func openTarget(ctx caddy.Context, cfgJSON []byte) (*target, error) {
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return nil, fmt.Errorf("reading the Caddy config: %w", err)
	}
	appJSON, ok := cfg.AppsRaw["acme"]
	if !ok {
		return nil, errors.New("the Caddy config has no acme app (apps.acme): the migration writes into the acme app's storage, with its api_uri and account_email")
	}
	var app appconfig.Config
	if err := json.Unmarshal(appJSON, &app); err != nil {
		return nil, fmt.Errorf("reading the acme app: %w", err)
	}
	t := &target{}
	var err error
	if t.set, err = app.Settings(); err != nil {
		return nil, fmt.Errorf("acme app: %w", err)
	}

	// the app's storage, else Caddy's global storage, else the default
	var holder any
	switch {
	case app.StorageRaw != nil:
		holder, t.storageName = &app, "the acme app's storage "+moduleName(app.StorageRaw)
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

// newIssuer returns the app's ACME issuer (appconfig.NewIssuer) over
// storage s (the target's, or a wrapper of it), with its account email set
// as certmagic sets it before it looks an account up (PreCheck).
func (t *target) newIssuer(ctx context.Context, s certmagic.Storage) (*certmagic.ACMEIssuer, error) {
	magic := certmagic.New(t.cache, certmagic.Config{Storage: s, Logger: zap.NewNop()})
	iss := appconfig.NewIssuer(magic, t.set, zap.NewNop())
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
