package caddyacme

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/admin"
	"github.com/acmekit/caddy-acme/renew"
)

// The App serves the admin API of package admin (admin.api.acme), which
// finds it at request time; importing admin registers that module.

// TriggerScan starts a renewal scan now, in the background; a scan asked
// for while one runs is coalesced into one more after it.
func (a *App) TriggerScan() {
	if a.runner != nil {
		a.runner.Trigger()
	}
}

// Order obtains host's certificate now, as POST /acme: a name with no
// certificate in storage is ordered, one with a certificate is renewed
// (Kong documents POST as a forced renewal). Unlike Kong the allowlist
// applies, a name in backoff or being ordered is refused (admin.ErrConflict)
// instead of answering "created" for nothing, and a failure sets the
// backoff like a failed handshake-time order.
func (a *App) Order(ctx context.Context, host string) error {
	host = normalizeHost(host)
	if err := a.allow(host); err != nil {
		return fmt.Errorf("%w: %v", admin.ErrNotAllowed, err)
	}
	if err := a.checkBackoff(ctx, host); err != nil {
		var inBackoff backoffError
		if !errors.As(err, &inBackoff) {
			return err // a storage error
		}
		return fmt.Errorf("%w: %v", admin.ErrConflict, err)
	}

	a.jobs.mu.Lock()
	if _, ok := a.jobs.running[host]; ok {
		a.jobs.mu.Unlock()
		return fmt.Errorf("%w: a certificate for host %s is already being obtained", admin.ErrConflict, host)
	}
	// handshakes for host wait for this job, as for one they started
	job := &obtainJob{done: make(chan struct{})}
	a.jobs.running[host] = job
	a.jobs.mu.Unlock()
	defer func() {
		a.jobs.mu.Lock()
		delete(a.jobs.running, host)
		a.jobs.mu.Unlock()
		close(job.done)
	}()

	if !a.storage.Exists(ctx, certmagic.StorageKeys.SiteCert(a.issuer.IssuerKey(), host)) {
		job.cert, job.err = a.loadOrObtain(host)
		return job.err
	}
	rctx, cancel := context.WithTimeout(a.ctx, a.issueTimeout())
	defer cancel()
	if refused, err := a.watchCA(rctx, host, func(ctx context.Context) error { return renewStore{a}.Renew(ctx, host) }); err != nil {
		if refused {
			a.setBackoff(host, err)
		}
		job.err = fmt.Errorf("renewing certificate for %s: %w", host, err)
		return job.err
	}
	if c, ok := a.cached(host); ok {
		job.cert = c
	} else {
		job.err = fmt.Errorf("certificate for %s renewed but not in memory", host)
	}
	return nil
}

// SanityCheck is POST /acme's test_http_challenge_flow: it fetches
// http://<host>:<http_port>/.well-known/acme-challenge/<random token> from
// this node, as the CA would (without following redirects). It passes when
// the name resolves and an HTTP server answers there with a status below
// 500: the acme_challenge handler passes unknown tokens on, so any such
// answer (a 404, the next handler's reply, a redirect) means that the CA's
// request would reach a server where the handler can answer. It cannot tell
// this Caddy from another server on that address.
func (a *App) SanityCheck(ctx context.Context, host string) error {
	host = normalizeHost(host)
	if err := a.allow(host); err != nil {
		return fmt.Errorf("%w: %v", admin.ErrNotAllowed, err)
	}
	port := a.HTTPPort
	if port == 0 {
		port = 80
	}
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	u := "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/.well-known/acme-challenge/" + hex.EncodeToString(token)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode >= 500 {
		return fmt.Errorf("unexpected response: %q, unexpected status code: %d", body, resp.StatusCode)
	}
	return nil
}

// Hosts lists the names of the app's certificates in storage, sorted.
// Unless fresh, it may answer with the listing of the last
// hostsSnapshotAge, so that walking the pages of GET /acme/certificates
// (the first page fresh, the next ones not) lists storage about once, not
// once per page: at 100k certificates a List takes about a second. A name
// deleted meanwhile is skipped by the caller; one added appears in the next
// walk.
func (a *App) Hosts(ctx context.Context, fresh bool) ([]string, error) {
	a.hosts.mu.Lock()
	defer a.hosts.mu.Unlock()
	if !fresh && a.hosts.names != nil && time.Since(a.hosts.listed) < hostsSnapshotAge {
		return a.hosts.names, nil
	}
	names, err := renewStore{a}.Names(ctx)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	a.hosts.names, a.hosts.listed = slices.Clip(names), time.Now()
	return a.hosts.names, nil
}

// hostsSnapshotAge is how long Hosts reuses a listing.
const hostsSnapshotAge = time.Minute

// hostsSnapshot is the listing Hosts reuses.
type hostsSnapshot struct {
	mu     sync.Mutex // protects names and listed
	names  []string   // sorted; callers must not modify it
	listed time.Time
}

// Certificate describes host's stored certificate with Kong's fields, when
// it is due for renewal, and the last renewal scan's error for it.
func (a *App) Certificate(ctx context.Context, host string) (admin.CertInfo, error) {
	infos, errs := a.Certificates(ctx, []string{host})
	return infos[0], errs[0]
}

// Certificates is Certificate for several hosts, read from storage in one
// batch (one round trip on a storage with LoadMany): a page of GET
// /acme/certificates.
func (a *App) Certificates(ctx context.Context, hosts []string) ([]admin.CertInfo, []error) {
	issuerKey := a.issuer.IssuerKey()
	perHost := 2 // certificate and metadata (its stored ARI window)
	if a.DisableARI {
		perHost = 1
	}
	names := make([]string, len(hosts))
	keys := make([]string, 0, perHost*len(hosts))
	for i, host := range hosts {
		names[i] = normalizeHost(host)
		cert, meta := siteKeys(issuerKey, names[i])
		keys = append(keys, cert)
		if !a.DisableARI {
			keys = append(keys, meta)
		}
	}
	values, loadErrs := loadMany(ctx, a.storage, keys)

	infos, errs := make([]admin.CertInfo, len(hosts)), make([]error, len(hosts))
	st, err := a.loadStatus(ctx)
	if err != nil {
		st = nil // the status only adds the last error; GET /acme reports a bad one
	}
	now := time.Now()
	policy := renew.Policy{Threshold: a.renewThreshold()}
	for i, host := range names {
		if errs[i] = loadErrs[perHost*i]; errs[i] != nil {
			continue
		}
		block, _ := pem.Decode(values[perHost*i])
		if block == nil {
			errs[i] = fmt.Errorf("no PEM certificate in storage for %s", host)
			continue
		}
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			errs[i] = fmt.Errorf("parsing stored certificate of %s: %w", host, err)
			continue
		}
		info := admin.NewCertInfo(host, leaf, now)
		rc := renew.Cert{Name: host, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Serial: leaf.SerialNumber}
		if !a.DisableARI && loadErrs[perHost*i+1] == nil {
			// the stored window only: listing certificates asks the CA nothing
			if ari, err := decodeARI(values[perHost*i+1]); err == nil {
				rc = withARI(rc, ari)
			}
		}
		info.RenewAt = policy.RenewAt(rc).UTC()
		info.RenewalDue = policy.Due(rc, now)
		if st != nil {
			if hs, ok := st.Hosts[host]; ok && hs.NotAfter.Equal(leaf.NotAfter) {
				info.LastRenewalError = hs.LastError
			}
		}
		infos[i] = info
	}
	return infos, errs
}

// Delete removes host's certificate, key and metadata from storage and
// this node's cache, revoking it at the CA first if revoke.
func (a *App) Delete(ctx context.Context, host string, revoke bool) error {
	host = normalizeHost(host)
	issuerKey := a.issuer.IssuerKey()
	if !a.storage.Exists(ctx, certmagic.StorageKeys.SiteCert(issuerKey, host)) {
		return fmt.Errorf("certificate for %s: %w", host, fs.ErrNotExist)
	}
	if revoke {
		if err := a.magic.RevokeCert(ctx, host, 0, false); err != nil {
			return fmt.Errorf("revoking: %w", err)
		}
	}
	for _, key := range []string{
		certmagic.StorageKeys.SiteCert(issuerKey, host),
		certmagic.StorageKeys.SitePrivateKey(issuerKey, host),
		certmagic.StorageKeys.SiteMeta(issuerKey, host),
		certmagic.StorageKeys.CertsSitePrefix(issuerKey, host),
	} {
		if err := a.storage.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("deleting %s: %w", key, err)
		}
	}
	a.evict(host)
	a.publishChange(ctx, host, true)
	return nil
}

// Status returns the last renewal scan's status as stored (whichever node
// ran it), with next_scan: when this node's next periodic scan starts (it
// does not scan if another node holds the scan lock then). It is an error
// for storage to hold something else than a JSON object there.
func (a *App) Status(ctx context.Context) (json.RawMessage, error) {
	st := make(map[string]json.RawMessage)
	data, err := a.storage.Load(ctx, renewStatusKey)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(data, &st); err != nil {
			return nil, fmt.Errorf("%s holds no JSON object: %v", renewStatusKey, err)
		}
	}
	if a.runner != nil {
		if next := a.runner.Next(); !next.IsZero() {
			st["next_scan"], _ = json.Marshal(next.UTC().Truncate(time.Second))
		}
	}
	return json.Marshal(st)
}

// storedStatus returns the last scan's status as stored (nil if none).
func (a *App) storedStatus(ctx context.Context) (*renew.Status, error) {
	data, err := a.storage.Load(ctx, renewStatusKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st := new(renew.Status)
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("%s: %v", renewStatusKey, err)
	}
	return st, nil
}

// loadStatus returns the last scan's status, read from storage at most once
// a second, so that a page of certificates does not read it once each.
func (a *App) loadStatus(ctx context.Context) (*renew.Status, error) {
	a.status.mu.Lock()
	defer a.status.mu.Unlock()
	if time.Since(a.status.read) < time.Second {
		return a.status.last, nil
	}
	st, err := a.storedStatus(ctx)
	if err != nil {
		return nil, err
	}
	a.status.last, a.status.read = st, time.Now()
	return st, nil
}

// statusCache is the last scan status read from storage.
type statusCache struct {
	mu   sync.Mutex // protects last and read
	last *renew.Status
	read time.Time
}

func normalizeHost(host string) string {
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

var _ admin.Manager = (*App)(nil)
