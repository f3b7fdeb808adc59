package caddyacme

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"runtime/debug"
	"slices"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/renew"
)

// renewStore gives the renewal scanner the app's certificates in storage.
type renewStore struct {
	a *App
}

// Names lists every certificate of the app's issuer in storage, also those
// no handshake asked for since this process started.
func (s renewStore) Names(ctx context.Context) ([]string, error) {
	keys, err := s.a.storage.List(ctx, certmagic.StorageKeys.CertsPrefix(s.a.issuer.IssuerKey()), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		names = append(names, path.Base(k))
	}
	return names, nil
}

// Cert reads the renewal facts of name's stored certificate.
func (s renewStore) Cert(ctx context.Context, name string) (renew.Cert, error) {
	data, err := s.a.storage.Load(ctx, certmagic.StorageKeys.SiteCert(s.a.issuer.IssuerKey(), name))
	if err != nil {
		return renew.Cert{}, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return renew.Cert{}, errors.New("no PEM certificate in storage")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return renew.Cert{}, fmt.Errorf("parsing stored certificate: %w", err)
	}
	return renew.Cert{Name: name, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Serial: leaf.SerialNumber}, nil
}

// Renew renews name's certificate at the CA and replaces it in this node's
// cache.
func (s renewStore) Renew(ctx context.Context, name string) error {
	if err := s.a.magic.RenewCertSync(ctx, name, true); err != nil {
		return err
	}
	return s.replaceCached(ctx, name)
}

// replaceCached loads name's stored certificate into this node's cache in
// place of the certificates it holds for name.
func (s renewStore) replaceCached(ctx context.Context, name string) error {
	var old []string
	for _, c := range s.a.cache.AllMatchingCertificates(name) {
		if slices.Contains(c.Names, name) {
			old = append(old, c.Hash())
		}
	}
	fresh, err := s.a.magic.CacheManagedCertificate(ctx, name)
	if err != nil {
		return fmt.Errorf("loading the renewed certificate: %w", err)
	}
	old = slices.DeleteFunc(old, func(h string) bool { return h == fresh.Hash() })
	s.a.cache.Remove(old)
	return nil
}

// refreshFromStorage replaces every certificate this node holds in memory
// whose stored version differs (another node renewed it), so a renewal
// reaches every node by its next scan at the latest. It reads storage once
// per certificate name, and loads only the changed ones.
func (a *App) refreshFromStorage(ctx context.Context) (replaced int, err error) {
	rs := renewStore{a}
	names, err := rs.Names(ctx)
	if err != nil {
		return 0, err
	}
	for _, name := range names {
		var cached []certmagic.Certificate
		for _, c := range a.cache.AllMatchingCertificates(name) {
			if slices.Contains(c.Names, name) {
				cached = append(cached, c)
			}
		}
		if len(cached) == 0 {
			continue // not in memory: a handshake will load the stored one
		}
		stored, err := rs.Cert(ctx, name)
		if err != nil {
			a.logger.Warn("reading stored certificate", zap.String("identifier", name), zap.Error(err))
			continue
		}
		if slices.ContainsFunc(cached, func(c certmagic.Certificate) bool {
			return c.Leaf != nil && c.Leaf.NotAfter.Equal(stored.NotAfter) && c.Leaf.SerialNumber.Cmp(stored.Serial) == 0
		}) {
			continue
		}
		if err := rs.replaceCached(ctx, name); err != nil {
			a.logger.Warn("loading a certificate renewed elsewhere", zap.String("identifier", name), zap.Error(err))
			continue
		}
		replaced++
	}
	return replaced, nil
}

// TryLock takes the cluster-wide scan lock without waiting.
func (s renewStore) TryLock(ctx context.Context, name string) (bool, error) {
	if tl, ok := s.a.storage.(certmagic.TryLocker); ok {
		return tl.TryLock(ctx, name)
	}
	if err := s.a.storage.Lock(ctx, name); err != nil {
		return false, err
	}
	return true, nil
}

// Unlock releases the scan lock.
func (s renewStore) Unlock(ctx context.Context, name string) error {
	return s.a.storage.Unlock(ctx, name)
}

// SaveStatus records the last scan in storage, where every node reads it.
func (s renewStore) SaveStatus(ctx context.Context, st renew.Status) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return s.a.storage.Store(ctx, renewStatusKey, data)
}

// renewStatusKey is the storage key of the last renewal scan's status.
const renewStatusKey = "caddy-acme/renew_status.json"

// startRenewal starts the periodic renewal scans; they end with the
// config's context.
func (a *App) startRenewal() {
	node, _ := os.Hostname()
	a.scanner = &renew.Scanner{
		Store:  renewStore{a},
		Policy: renew.Policy{Threshold: a.renewThreshold()},
		Clock:  renew.SystemClock{},
		Node:   node,
	}
	a.runner = renew.NewRunner(a.scanner)
	a.runner.Interval = time.Duration(a.RenewInterval)
	logger := a.logger.Named("renew")
	a.runner.OnScan = func(st renew.Status, err error) {
		if n, err := a.refreshFromStorage(a.ctx); err != nil {
			logger.Error("refreshing certificates from storage", zap.Error(err))
		} else if n > 0 {
			logger.Info("loaded certificates renewed by another node", zap.Int("count", n))
		}
		switch {
		case errors.Is(err, renew.ErrBusy):
			logger.Debug("another node is scanning")
		case err != nil:
			logger.Error("renewal scan", zap.Error(err))
		default:
			logger.Info("renewal scan done",
				zap.Int("checked", st.Checked),
				zap.Int("renewed", st.Renewed),
				zap.Int("failed", st.Failed),
				zap.Duration("took", st.End.Sub(st.Start)))
		}
	}
	go func() {
		defer func() {
			if r := recover(); r != nil {
				logger.Error("panic in renewal scans; they stop until the next config load",
					zap.Any("panic", r),
					zap.ByteString("stack", debug.Stack()))
			}
		}()
		a.runner.Run(a.ctx)
	}()
}

func (a *App) renewThreshold() time.Duration {
	days := 14.0
	if a.RenewThresholdDays != nil {
		days = *a.RenewThresholdDays
	}
	return time.Duration(days * float64(24*time.Hour))
}
