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
	"unicode/utf8"

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

// loadStored reads the leaf of name's newest stored certificate (at any
// of the CAs).
func (r *Runtime) loadStored(ctx context.Context, name string) (*x509.Certificate, error) {
	stored, errs := r.loadNewest(ctx, []string{name}, false)
	return stored[0].leaf, errs[0]
}

// renewCert is what a renewal decision needs of name's certificate leaf.
func renewCert(name string, leaf *x509.Certificate) renew.Cert {
	return renew.Cert{Name: name, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Serial: leaf.SerialNumber}
}

// names lists every certificate in storage, at any of the CAs, also
// those no handshake asked for since this process started.
func (r *Runtime) names(ctx context.Context) ([]string, error) {
	var names []string
	seen := make(map[string]bool)
	for _, c := range r.cas {
		keys, err := r.storage.List(ctx, CertsPrefix(c.key), false)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			name := storedName(path.Base(k))
			if !seen[name] {
				seen[name] = true
				names = append(names, name)
			}
		}
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
	stored, errs := r.loadNewest(ctx, names, !r.opts.DisableARI)
	certs := make([]renew.Cert, len(names))
	for i, name := range names {
		certs[i] = renew.Cert{Name: name}
		if errs[i] == nil {
			certs[i] = renewCert(name, stored[i].leaf)
		}
	}
	if r.opts.DisableARI {
		return certs, errs
	}
	var wg sync.WaitGroup
	for i, name := range names {
		if errs[i] != nil {
			continue
		}
		sc := stored[i]
		var ari acme.RenewalInfo
		err := sc.metaErr
		if err == nil {
			ari, err = decodeARI(sc.meta)
		}
		if err != nil {
			r.renewLog.Debug("no usable stored ARI", zap.String("identifier", name), zap.Error(err))
		}
		if ari.HasWindow() && !ari.NeedsRefresh() {
			certs[i] = withARI(certs[i], ari)
			continue
		}
		var meta map[string]json.RawMessage // to store the fresh ARI into
		if sc.metaErr == nil {
			_, meta, _ = parseARI(sc.meta)
		}
		r.ariSlots <- struct{}{}
		wg.Go(func() {
			defer func() { <-r.ariSlots }()
			certs[i] = withARI(certs[i], r.refreshARI(ctx, sc.ca, name, sc.leaf, ari, meta))
		})
	}
	wg.Wait()
	return certs, errs
}

// ariFetchParallelism bounds the ARI requests to the CAs in flight, over
// every batch the scan reads at once (Runtime.ariSlots).
const ariFetchParallelism = 8

// refreshARI asks ca, which issued it, for the ARI of name's certificate (leaf) and
// stores it into its metadata (meta, nil if unreadable). On failure it
// returns stale, the CA's last word, and logs.
func (r *Runtime) refreshARI(ctx context.Context, ca *caState, name string, leaf *x509.Certificate, stale acme.RenewalInfo, meta map[string]json.RawMessage) acme.RenewalInfo {
	fresh, err := ca.issuer.GetRenewalInfo(ctx, certmagic.Certificate{Certificate: tls.Certificate{Leaf: leaf}})
	if err != nil {
		r.renewLog.Debug("getting ARI from the CA", zap.String("identifier", name), zap.Error(err))
		return stale
	}
	if meta != nil {
		if err := r.storeARI(ctx, ca, name, meta, fresh); err != nil {
			r.renewLog.Warn("storing ARI", zap.String("identifier", name), zap.Error(err))
		}
	}
	return fresh
}

// decodeARI reads the ARI in certificate metadata as parseARI does,
// without keeping the metadata: what the scan needs of every certificate
// (parseARI is for the few whose ARI it stores back). Certmagic's metadata
// is decoded in one pass into nested structs; metadata that names
// issuer_data or renewal_info twice, or may spell them otherwise
// (plainARIKeys), is decoded step by step (decodeARISteps), since struct
// decoding merges a repeated key's objects where parseARI keeps the last.
func decodeARI(data []byte) (acme.RenewalInfo, error) {
	if !plainARIKeys(data) {
		return decodeARISteps(data)
	}
	var meta struct {
		IssuerData *struct {
			RenewalInfo *acme.RenewalInfo `json:"renewal_info"`
		} `json:"issuer_data"`
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return acme.RenewalInfo{}, err
	}
	if meta.IssuerData == nil || meta.IssuerData.RenewalInfo == nil {
		return acme.RenewalInfo{}, nil
	}
	return *meta.IssuerData.RenewalInfo, nil
}

// plainARIKeys reports whether data is ASCII without \u escapes and holds
// the strings "issuer_data" and "renewal_info" at most once each, in any
// case (struct decoding matches keys case-insensitively). Without \u, a
// key can only spell them as they are: JSON's other escapes stand for no
// letter and no underscore.
func plainARIKeys(data []byte) bool {
	issuerData, renewalInfo := 0, 0
	for i, c := range data {
		switch {
		case c >= utf8.RuneSelf, c == '\\' && i+1 < len(data) && data[i+1] == 'u':
			return false
		case c != '"': // a key spelt without escapes follows its quote
		case hasFoldPrefix(data[i+1:], `issuer_data"`):
			issuerData++
		case hasFoldPrefix(data[i+1:], `renewal_info"`):
			renewalInfo++
		}
	}
	return issuerData <= 1 && renewalInfo <= 1
}

// hasFoldPrefix reports whether b starts with s (lower-case ASCII) in
// any case.
func hasFoldPrefix(b []byte, s string) bool {
	if len(b) < len(s) {
		return false
	}
	for i := range len(s) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// decodeARISteps is decodeARI one level at a time, each key's last value
// decoded alone.
func decodeARISteps(data []byte) (acme.RenewalInfo, error) {
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
func (r *Runtime) storeARI(ctx context.Context, ca *caState, name string, meta map[string]json.RawMessage, ari acme.RenewalInfo) error {
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
	return r.storage.Store(ctx, Site(ca.key, name).Meta, data)
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
	return s.r.renew(ctx, name, false)
}

// renew renews name's certificate at the CAs usable for it (in order:
// the primary first, whichever CA issued it), replaces it in this node's
// cache and tells the other nodes. The CAs' verdicts pause them as an
// order's do; a refusal backs the name off only with backoff (POST /acme,
// not the scan, which retries at its next run).
func (r *Runtime) renew(ctx context.Context, name string, backoff bool) error {
	usable, err := r.usableCAs(ctx, name, true)
	if err != nil {
		return err
	}
	if err := r.check.check(ctx, r.storage); err != nil {
		return fmt.Errorf("renewing certificate for %s: %w", name, err)
	}
	magic := r.magicFor(usable)
	v, err := watch(ctx, name, func(ctx context.Context) error { return magic.RenewCertSync(ctx, name, true) })
	r.afterOrder(name, v, err, backoff)
	if v.renewed {
		// published here, once certmagic has released the issue lock
		defer r.changes.publish(ctx, name, false)
	}
	if err != nil {
		return err
	}
	return r.replaceCached(ctx, name)
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
