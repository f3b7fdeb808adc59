package caddyacme

import (
	"context"
	"crypto/tls"
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
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
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

// Cert reads the renewal facts of name's stored certificate (see Certs).
func (s renewStore) Cert(ctx context.Context, name string) (renew.Cert, error) {
	certs, errs := s.Certs(ctx, []string{name})
	return certs[0], errs[0]
}

// Certs reads the renewal facts of names' stored certificates, in one
// storage batch (ManyLoader), with the CA's ARI window (RFC 9773) unless
// disable_ari: the one stored with the certificate's metadata, asked from
// the CA again when missing or when the CA's Retry-After has passed (a few
// at once), and stored back for the next scan.
func (s renewStore) Certs(ctx context.Context, names []string) ([]renew.Cert, []error) {
	issuerKey := s.a.issuer.IssuerKey()
	keys := make([]string, 0, 2*len(names))
	for _, name := range names {
		cert, meta := siteKeys(issuerKey, name)
		keys = append(keys, cert, meta)
	}
	values, loadErrs := loadMany(ctx, s.a.storage, keys)

	certs, errs := make([]renew.Cert, len(names)), make([]error, len(names))
	leaves := make([]*x509.Certificate, len(names))
	for i, name := range names {
		if errs[i] = loadErrs[2*i]; errs[i] == nil {
			certs[i], leaves[i], errs[i] = parseStoredCert(name, values[2*i])
		}
	}
	if s.a.DisableARI {
		return certs, errs
	}
	logger := s.a.logger.Named("renew")
	sem := make(chan struct{}, ariFetchParallelism)
	var wg sync.WaitGroup
	for i, name := range names {
		if errs[i] != nil {
			continue
		}
		var ari acme.RenewalInfo
		err := loadErrs[2*i+1]
		if err == nil {
			ari, err = decodeARI(values[2*i+1])
		}
		if err != nil {
			logger.Debug("no usable stored ARI", zap.String("identifier", name), zap.Error(err))
		}
		if ari.HasWindow() && !ari.NeedsRefresh() {
			certs[i] = withARI(certs[i], ari)
			continue
		}
		var meta map[string]json.RawMessage // to store the fresh ARI into
		if loadErrs[2*i+1] == nil {
			_, meta, _ = parseARI(values[2*i+1])
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			certs[i] = withARI(certs[i], s.refreshARI(ctx, name, leaves[i], ari, meta))
		})
	}
	wg.Wait()
	return certs, errs
}

// ariFetchParallelism bounds the ARI requests to the CA in flight.
const ariFetchParallelism = 8

// stored reads name's certificate from storage.
func (s renewStore) stored(ctx context.Context, name string) (renew.Cert, *x509.Certificate, error) {
	data, err := s.a.storage.Load(ctx, certmagic.StorageKeys.SiteCert(s.a.issuer.IssuerKey(), name))
	if err != nil {
		return renew.Cert{}, nil, err
	}
	return parseStoredCert(name, data)
}

// parseStoredCert reads the leaf of a stored certificate chain.
func parseStoredCert(name string, data []byte) (renew.Cert, *x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return renew.Cert{Name: name}, nil, errors.New("no PEM certificate in storage")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return renew.Cert{Name: name}, nil, fmt.Errorf("parsing stored certificate: %w", err)
	}
	return renew.Cert{Name: name, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Serial: leaf.SerialNumber}, leaf, nil
}

// refreshARI asks the CA for the ARI of name's certificate (leaf) and
// stores it into its metadata (meta, nil if unreadable). On failure it
// returns stale, the CA's last word, and logs.
func (s renewStore) refreshARI(ctx context.Context, name string, leaf *x509.Certificate, stale acme.RenewalInfo, meta map[string]json.RawMessage) acme.RenewalInfo {
	logger := s.a.logger.Named("renew")
	fresh, err := s.a.issuer.GetRenewalInfo(ctx, certmagic.Certificate{Certificate: tls.Certificate{Leaf: leaf}})
	if err != nil {
		logger.Debug("getting ARI from the CA", zap.String("identifier", name), zap.Error(err))
		return stale
	}
	if meta != nil {
		if err := s.storeARI(ctx, name, meta, fresh); err != nil {
			logger.Warn("storing ARI", zap.String("identifier", name), zap.Error(err))
		}
	}
	return fresh
}

// storedARI reads the ARI that certmagic keeps in name's certificate
// metadata (see parseARI).
func (s renewStore) storedARI(ctx context.Context, name string) (acme.RenewalInfo, map[string]json.RawMessage, error) {
	data, err := s.a.storage.Load(ctx, certmagic.StorageKeys.SiteMeta(s.a.issuer.IssuerKey(), name))
	if err != nil {
		return acme.RenewalInfo{}, nil, err
	}
	return parseARI(data)
}

// siteKeys returns the storage keys of name's certificate and metadata,
// as certmagic.StorageKeys.SiteCert and SiteMeta, building one from the
// other (certmagic's keys cost a strings.Replacer and a regexp each).
func siteKeys(issuerKey, name string) (cert, meta string) {
	cert = certmagic.StorageKeys.SiteCert(issuerKey, name)
	return cert, strings.TrimSuffix(cert, ".crt") + ".json"
}

// decodeARI reads the ARI in certificate metadata as parseARI does, in one
// pass and without keeping the metadata: what the scan needs of every
// certificate (parseARI is for the few whose ARI it stores back).
func decodeARI(data []byte) (acme.RenewalInfo, error) {
	var meta struct {
		IssuerData json.RawMessage `json:"issuer_data"`
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return acme.RenewalInfo{}, err
	}
	if len(meta.IssuerData) == 0 || string(meta.IssuerData) == "null" {
		return acme.RenewalInfo{}, nil
	}
	var issuerData struct {
		RenewalInfo json.RawMessage `json:"renewal_info"`
	}
	if err := json.Unmarshal(meta.IssuerData, &issuerData); err != nil {
		return acme.RenewalInfo{}, fmt.Errorf("issuer_data: %w", err)
	}
	var ari acme.RenewalInfo
	if len(issuerData.RenewalInfo) > 0 {
		if err := json.Unmarshal(issuerData.RenewalInfo, &ari); err != nil {
			return acme.RenewalInfo{}, fmt.Errorf("renewal_info: %w", err)
		}
	}
	return ari, nil
}

// parseARI reads the ARI in certificate metadata as certmagic stores it
// (issuer_data.renewal_info), and the metadata itself (nil if unreadable).
func parseARI(data []byte) (acme.RenewalInfo, map[string]json.RawMessage, error) {
	var ari acme.RenewalInfo
	var meta, issuerData map[string]json.RawMessage
	if err := json.Unmarshal(data, &meta); err != nil {
		return ari, nil, err
	}
	if len(meta["issuer_data"]) > 0 {
		if err := json.Unmarshal(meta["issuer_data"], &issuerData); err != nil {
			return ari, nil, fmt.Errorf("issuer_data: %w", err)
		}
	}
	if len(issuerData["renewal_info"]) > 0 {
		if err := json.Unmarshal(issuerData["renewal_info"], &ari); err != nil {
			return acme.RenewalInfo{}, meta, fmt.Errorf("renewal_info: %w", err)
		}
	}
	return ari, meta, nil
}

// storeARI writes ari into the certificate's metadata, keeping the rest.
func (s renewStore) storeARI(ctx context.Context, name string, meta map[string]json.RawMessage, ari acme.RenewalInfo) error {
	issuerData := make(map[string]json.RawMessage)
	if len(meta["issuer_data"]) > 0 {
		if err := json.Unmarshal(meta["issuer_data"], &issuerData); err != nil {
			return err
		}
	}
	var err error
	if issuerData["renewal_info"], err = json.Marshal(ari); err != nil {
		return err
	}
	if meta["issuer_data"], err = json.Marshal(issuerData); err != nil {
		return err
	}
	data, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	return s.a.storage.Store(ctx, certmagic.StorageKeys.SiteMeta(s.a.issuer.IssuerKey(), name), data)
}

// withARI sets c's ARI window: the random time in it that acmez selected
// (certmagic renews at that time too), or its start if none.
func withARI(c renew.Cert, ari acme.RenewalInfo) renew.Cert {
	if !ari.HasWindow() {
		return c
	}
	c.ARIStart, c.ARIEnd = ari.SelectedTime, ari.SuggestedWindow.End
	if c.ARIStart.IsZero() {
		c.ARIStart = ari.SuggestedWindow.Start
	}
	return c
}

// Renew renews name's certificate at the CA and replaces it in this node's
// cache.
func (s renewStore) Renew(ctx context.Context, name string) error {
	if err := s.a.magic.RenewCertSync(ctx, name, true); err != nil {
		return err
	}
	return s.replaceCached(ctx, name) // the other nodes learn it from onEvent's publishChange
}

// replaceCached loads name's stored certificate into this node's cache in
// place of the certificates it holds for name.
func (s renewStore) replaceCached(ctx context.Context, name string) error {
	var old []string
	for _, c := range s.a.cachedFor(name) {
		old = append(old, c.Hash())
	}
	fresh, err := s.a.magic.CacheManagedCertificate(ctx, name)
	if err != nil {
		return fmt.Errorf("loading the renewed certificate: %w", err)
	}
	old = slices.DeleteFunc(old, func(h string) bool { return h == fresh.Hash() })
	s.a.cache.Remove(old)
	return nil
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

// firstScanDelay is how long after start the first scan runs. A variable
// for tests.
var firstScanDelay = time.Minute

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
	a.runner.FirstDelay = firstScanDelay
	logger := a.logger.Named("renew")
	a.runner.OnScan = func(st renew.Status, err error) {
		// the safety net under the change log of cachesync.go
		if n, err := a.refreshCached(a.ctx); err != nil && a.ctx.Err() == nil {
			logger.Error("refreshing certificates from storage", zap.Error(err))
		} else if n > 0 {
			logger.Info("reloaded certificates changed by another node", zap.Int("count", n))
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

// Interface guards
var _ renew.BatchStore = renewStore{}

func (a *App) renewThreshold() time.Duration {
	days := 14.0
	if a.RenewThresholdDays != nil {
		days = *a.RenewThresholdDays
	}
	return time.Duration(days * float64(24*time.Hour))
}
