package issuance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sync"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/renew"
)

// parseLeaf reads the leaf of name's stored certificate chain.
func parseLeaf(name string, data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM certificate in storage for %s", name)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing stored certificate of %s: %w", name, err)
	}
	return leaf, nil
}

// loadStored reads the leaf of name's stored certificate.
func (r *Runtime) loadStored(ctx context.Context, name string) (*x509.Certificate, error) {
	data, err := r.storage.Load(ctx, Site(r.issuer.IssuerKey(), name).Cert)
	if err != nil {
		return nil, err
	}
	return parseLeaf(name, data)
}

// renewCert is what a renewal decision needs of name's certificate leaf.
func renewCert(name string, leaf *x509.Certificate) renew.Cert {
	return renew.Cert{Name: name, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Serial: leaf.SerialNumber}
}

// names lists every certificate of the issuer in storage, also those no
// handshake asked for since this process started.
func (r *Runtime) names(ctx context.Context) ([]string, error) {
	keys, err := r.storage.List(ctx, CertsPrefix(r.issuer.IssuerKey()), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		names = append(names, storedName(path.Base(k)))
	}
	return names, nil
}

// renewStore gives the renewal scanner the certificates in storage.
type renewStore struct {
	r *Runtime
}

// Names implements renew.Store.
func (s renewStore) Names(ctx context.Context) ([]string, error) { return s.r.names(ctx) }

// Cert reads the renewal facts of name's stored certificate (see Certs).
func (s renewStore) Cert(ctx context.Context, name string) (renew.Cert, error) {
	certs, errs := s.Certs(ctx, []string{name})
	return certs[0], errs[0]
}

// Certs reads the renewal facts of names' stored certificates, in one
// storage batch (ManyLoader), with the CA's ARI window (RFC 9773) unless
// DisableARI: the one stored with the certificate's metadata, asked from
// the CA again when missing or when the CA's Retry-After has passed (a few
// at once), and stored back for the next scan.
func (s renewStore) Certs(ctx context.Context, names []string) ([]renew.Cert, []error) {
	r := s.r
	issuerKey := r.issuer.IssuerKey()
	keys := make([]string, 0, 2*len(names))
	for _, name := range names {
		k := Site(issuerKey, name)
		keys = append(keys, k.Cert, k.Meta)
	}
	values, loadErrs := LoadMany(ctx, r.storage, keys)

	certs, errs := make([]renew.Cert, len(names)), make([]error, len(names))
	leaves := make([]*x509.Certificate, len(names))
	for i, name := range names {
		certs[i] = renew.Cert{Name: name}
		if errs[i] = loadErrs[2*i]; errs[i] != nil {
			continue
		}
		if leaves[i], errs[i] = parseLeaf(name, values[2*i]); errs[i] == nil {
			certs[i] = renewCert(name, leaves[i])
		}
	}
	if r.opts.DisableARI {
		return certs, errs
	}
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
			r.renewLog.Debug("no usable stored ARI", zap.String("identifier", name), zap.Error(err))
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
			certs[i] = withARI(certs[i], r.refreshARI(ctx, name, leaves[i], ari, meta))
		})
	}
	wg.Wait()
	return certs, errs
}

// ariFetchParallelism bounds the ARI requests to the CA in flight.
const ariFetchParallelism = 8

// refreshARI asks the CA for the ARI of name's certificate (leaf) and
// stores it into its metadata (meta, nil if unreadable). On failure it
// returns stale, the CA's last word, and logs.
func (r *Runtime) refreshARI(ctx context.Context, name string, leaf *x509.Certificate, stale acme.RenewalInfo, meta map[string]json.RawMessage) acme.RenewalInfo {
	fresh, err := r.issuer.GetRenewalInfo(ctx, certmagic.Certificate{Certificate: tls.Certificate{Leaf: leaf}})
	if err != nil {
		r.renewLog.Debug("getting ARI from the CA", zap.String("identifier", name), zap.Error(err))
		return stale
	}
	if meta != nil {
		if err := r.storeARI(ctx, name, meta, fresh); err != nil {
			r.renewLog.Warn("storing ARI", zap.String("identifier", name), zap.Error(err))
		}
	}
	return fresh
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
func (r *Runtime) storeARI(ctx context.Context, name string, meta map[string]json.RawMessage, ari acme.RenewalInfo) error {
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
	return r.storage.Store(ctx, Site(r.issuer.IssuerKey(), name).Meta, data)
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
// cache (the scan's renewal; the CA's refusal sets no backoff, the next
// scan retries).
func (s renewStore) Renew(ctx context.Context, name string) error {
	_, err := s.r.renew(ctx, name)
	return err
}

// renew renews name's certificate at the CA, replaces it in this node's
// cache and tells the other nodes, and returns the CA's verdict.
func (r *Runtime) renew(ctx context.Context, name string) (watched, error) {
	v, err := watch(ctx, name, func(ctx context.Context) error { return r.magic.RenewCertSync(ctx, name, true) })
	if v.renewed {
		// published here, once certmagic has released the issue lock
		defer r.changes.publish(ctx, name, false)
	}
	if err != nil {
		return v, err
	}
	return v, r.replaceCached(ctx, name)
}

// TryLock takes the cluster-wide scan lock without waiting.
func (s renewStore) TryLock(ctx context.Context, name string) (bool, error) {
	if tl, ok := s.r.storage.(certmagic.TryLocker); ok {
		return tl.TryLock(ctx, name)
	}
	if err := s.r.storage.Lock(ctx, name); err != nil {
		return false, err
	}
	return true, nil
}

// Unlock releases the scan lock.
func (s renewStore) Unlock(ctx context.Context, name string) error {
	return s.r.storage.Unlock(ctx, name)
}

// SaveStatus records the last scan in storage, where every node reads it.
func (s renewStore) SaveStatus(ctx context.Context, st renew.Status) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return s.r.storage.Store(ctx, StatusKey, data)
}

// newRunner returns the runner of the periodic renewal scans (started by
// startRenewal; a scan triggered before runs then).
func (r *Runtime) newRunner() *renew.Runner {
	runner := renew.NewRunner(r.scanner)
	runner.Interval = r.opts.RenewInterval
	runner.FirstDelay = r.opts.FirstScanDelay
	logger := r.renewLog
	runner.OnScan = func(st renew.Status, err error) {
		// the safety net under the change log of cachesync.go
		if n, err := r.refreshCached(r.ctx); err != nil && r.ctx.Err() == nil {
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
	return runner
}

// startRenewal starts the periodic renewal scans; they end with the
// runtime's context.
func (r *Runtime) startRenewal() {
	goRecover(r.renewLog, "panic in renewal scans; they stop until the next config load", func() {
		r.runner.Run(r.ctx)
	})
}

// Scan runs one renewal scan now, as the periodic ones do, and returns its
// status (renew.ErrBusy when another node is scanning).
func (r *Runtime) Scan(ctx context.Context) (renew.Status, error) {
	return r.scanner.Scan(ctx)
}

// Interface guards
var _ renew.BatchStore = renewStore{}
