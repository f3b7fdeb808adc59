package issuance

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
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
	"syscall"
	"time"

	"github.com/acmekit/caddy-acme/internal/allowlist"
)

// The operations of the admin API (package admin, served by the app).

// Errors the admin operations wrap to say why they refused.
var (
	// ErrNotAllowed: the host is not allowed (Options.Allow).
	ErrNotAllowed = errors.New("host not allowed")
	// ErrConflict: the host is in backoff, or being ordered.
	ErrConflict = errors.New("conflicting order")
	// ErrBadHost: the name is not one host name or IPv4 address (the admin
	// API checks it first; the runtime refuses it too, so that it never
	// becomes a storage key or a name evicted from the other nodes).
	ErrBadHost = errors.New("bad host")
)

// checkName refuses a name (normalised) that is not one host name, IP
// address or wildcard subject `*.x`: storage, memory and the change log
// must all see the same valid name. (Whether `*.x` may have a certificate
// is the runtime's allow.)
func checkName(host string) error {
	name := strings.TrimPrefix(host, "*.")
	if name == "" || strings.HasSuffix(name, ".") || strings.Contains(name, "*") || len(host) > 253 {
		return fmt.Errorf("%w: not a single host name", ErrBadHost)
	}
	if err := allowlist.Validate(name); err != nil {
		return fmt.Errorf("%w: %v", ErrBadHost, err)
	}
	return nil
}

// storageErr is err without the file path of an *fs.PathError (a file
// system storage's), which the admin API must not show; errors.Is still
// sees its cause (fs.ErrNotExist, …).
func storageErr(what string, err error) error {
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		return fmt.Errorf("%s: %s: %w", what, pe.Op, pe.Err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// TriggerScan starts a renewal scan now, in the background; a scan asked
// for while one runs is coalesced into one more after it, one asked for
// before Start runs at Start.
func (r *Runtime) TriggerScan() { r.runner.Trigger() }

// Order obtains host's certificate now, as POST /acme: a name with no
// certificate in storage is ordered, one with a certificate is renewed
// (Kong documents POST as a forced renewal). Unlike Kong the allowlist
// applies, a name in backoff or being ordered is refused (ErrConflict)
// instead of answering "created" for nothing, and the CA's refusal sets
// the backoff like a failed handshake-time order. With wildcard
// certificates, `*.x` may be ordered, and a name one label below x orders
// (or renews) `*.x`, the certificate that serves it, unless it has a
// certificate of its own.
func (r *Runtime) Order(ctx context.Context, host string) error {
	host = NormalizeHost(host)
	ask, err := r.allow(host)
	if err == nil && r.opts.Orderable != nil {
		err = r.opts.Orderable(host)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotAllowed, err)
	}
	if sub := r.subject(host); sub != host && !r.storedAtAnyCA(ctx, host) {
		host = sub // a.x is served by *.x with wildcard certificates (unless it has its own)
	}
	if _, err := r.usableCAs(ctx, host, false); err != nil {
		if _, ok := errors.AsType[BackoffError](err); ok {
			return fmt.Errorf("%w: %w", ErrConflict, err)
		}
		return err // the CAs are paused, or reading storage
	}

	// handshakes for host wait for this job, as for one they started
	j, isNew := r.jobs.claim(host, false)
	if !isNew {
		return fmt.Errorf("%w: a certificate for host %s is already being obtained", ErrConflict, host)
	}
	defer r.jobs.finish(host, j)
	j.ask = ask

	if !r.storedAtAnyCA(ctx, host) {
		j.cert, j.err = r.loadOrObtain(j, host)
		return j.err
	}
	rctx, cancel := context.WithTimeout(r.ctx, r.opts.IssueTimeout)
	defer cancel()
	if err := r.renew(rctx, host, true); err != nil {
		j.err = fmt.Errorf("renewing certificate for %s: %w", host, err)
		return j.err
	}
	if c, ok := r.cached(host); ok {
		j.cert = c
	} else {
		j.err = fmt.Errorf("certificate for %s renewed but not in memory", host)
	}
	return nil
}

// SanityCheck is POST /acme's test_http_challenge_flow: it fetches
// http://<host>:<HTTPPort>/.well-known/acme-challenge/<random token> from
// this node, as the CA would (without following redirects). It passes when
// the name resolves and an HTTP server answers there with a status below
// 500: the acme_challenge handler passes unknown tokens on, so any such
// answer (a 404, the next handler's reply, a redirect) means that the CA's
// request would reach a server where the handler can answer. It cannot tell
// this Caddy from another server on that address.
//
// It is not a way to reach this node's neighbours: the name must be one the
// CA may be asked for (Options.Orderable: with a public CA, no local name
// or non-public address), and so must every address it connects to (a
// public name resolving to a private address is refused too). The error
// gives the status of a failed answer, never its body.
func (r *Runtime) SanityCheck(ctx context.Context, host string) error {
	host = NormalizeHost(host)
	if err := checkName(host); err != nil {
		return err
	}
	_, err := r.allow(host)
	if err == nil && r.opts.Orderable != nil {
		err = r.opts.Orderable(host)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotAllowed, err)
	}
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	u := "http://" + net.JoinHostPort(host, strconv.Itoa(r.opts.HTTPPort)) + "/.well-known/acme-challenge/" + hex.EncodeToString(token)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	dialer := &net.Dialer{Control: r.sanityDialControl}
	client := &http.Client{
		Transport: &http.Transport{
			Proxy:             nil, // the CA connects directly
			DialContext:       dialer.DialContext,
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 512))
	if resp.StatusCode >= 500 {
		// the status only: the body is the answer of whatever server is
		// there, not for the admin API's caller
		return fmt.Errorf("unexpected status code: %d", resp.StatusCode)
	}
	return nil
}

// sanityDialControl refuses to connect to an address the CA may not be
// asked for (Options.Orderable): a name that resolves to a non-public
// address with a public CA.
func (r *Runtime) sanityDialControl(_, address string, _ syscall.RawConn) error {
	if r.opts.Orderable == nil {
		return nil
	}
	ip, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	if err := r.opts.Orderable(ip); err != nil {
		return fmt.Errorf("%w: the host resolves to %w", ErrNotAllowed, err)
	}
	return nil
}

// Hosts lists the names of the certificates in storage, sorted. Unless
// fresh, it may answer with the listing of the last hostsSnapshotAge, so
// that walking the pages of GET /acme/certificates (the first page fresh,
// the next ones not) lists storage about once, not once per page: at 100k
// certificates a List takes about a second. A name deleted meanwhile is
// skipped by the caller; one added appears in the next walk. Callers must
// not modify the slice.
func (r *Runtime) Hosts(ctx context.Context, fresh bool) ([]string, error) {
	h := &r.hosts
	h.mu.Lock()
	defer h.mu.Unlock()
	if !fresh && h.names != nil && time.Since(h.listed) < hostsSnapshotAge {
		return h.names, nil
	}
	names, err := r.names(ctx)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	h.names, h.listed = slices.Clip(names), time.Now()
	return h.names, nil
}

// hostsSnapshotAge is how long Hosts reuses a listing.
const hostsSnapshotAge = time.Minute

// hostsSnapshot is the listing Hosts reuses.
type hostsSnapshot struct {
	mu     sync.Mutex // protects names and listed
	names  []string   // sorted; callers must not modify it
	listed time.Time
}

// Stored is a certificate in storage as the admin API shows it: its leaf,
// when it is due for renewal, and the last renewal scan's error for it.
type Stored struct {
	Host             string
	Leaf             *x509.Certificate
	IssuerKey        string    // of the CA that issued it (the app's or a fallback CA)
	RenewAt          time.Time // UTC
	RenewalDue       bool
	LastRenewalError string
}

// Certificates describes hosts' stored certificates, read from storage in
// one batch (one round trip on a storage with LoadMany): a page of GET
// /acme/certificates. certs[i] and errs[i] are hosts[i]'s; a host without
// a certificate has an error wrapping fs.ErrNotExist.
func (r *Runtime) Certificates(ctx context.Context, hosts []string) (certs []Stored, errs []error) {
	names := make([]string, len(hosts))
	for i, host := range hosts {
		names[i] = NormalizeHost(host)
	}
	stored, loadErrs := r.loadNewest(ctx, names, !r.opts.DisableARI)

	certs, errs = make([]Stored, len(hosts)), make([]error, len(hosts))
	st, err := r.loadStatus(ctx)
	if err != nil {
		st = nil // the status only adds the last error; GET /acme reports a bad one
	}
	now := time.Now()
	policy := r.policy()
	for i, host := range names {
		if err := loadErrs[i]; err != nil {
			errs[i] = err
			continue
		}
		leaf := stored[i].leaf
		rc := renewCert(host, leaf)
		if !r.opts.DisableARI && stored[i].metaErr == nil {
			// the stored window only: listing certificates asks the CA nothing
			if ari, err := decodeARI(stored[i].meta); err == nil {
				rc = withARI(rc, ari)
			}
		}
		c := Stored{Host: host, Leaf: leaf, IssuerKey: stored[i].ca.key, RenewAt: policy.RenewAt(rc).UTC(), RenewalDue: policy.Due(rc, now)}
		if st != nil {
			if hs, ok := st.Hosts[host]; ok && hs.NotAfter.Equal(leaf.NotAfter) {
				c.LastRenewalError = hs.LastError
			}
		}
		certs[i] = c
	}
	return certs, errs
}

// Delete removes host's certificate, key and metadata from storage, from
// this node's memory and, through the change log, from the other nodes',
// revoking it at the CA first if revoke. fs.ErrNotExist (wrapped) when
// there is none.
func (r *Runtime) Delete(ctx context.Context, host string, revoke bool) error {
	host = NormalizeHost(host)
	if err := checkName(host); err != nil {
		return err
	}
	holders := r.holders(ctx, host)
	if len(holders) == 0 {
		return fmt.Errorf("certificate for %s: %w", host, fs.ErrNotExist)
	}
	if revoke {
		// each CA revokes its own (certmagic's RevokeCert asks every
		// issuer of the configuration it is given)
		if err := r.magicFor(holders).RevokeCert(ctx, host, 0, false); err != nil {
			return fmt.Errorf("revoking: %w", err)
		}
	}
	for _, c := range holders {
		k := Site(c.key, host)
		for _, item := range []struct{ what, key string }{{"certificate", k.Cert}, {"private key", k.Key}, {"metadata", k.Meta}, {"directory", k.Dir}} {
			if err := r.storage.Delete(ctx, item.key); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return storageErr("deleting the "+item.what, err)
			}
		}
	}
	r.evict(host)
	r.changes.publish(ctx, host, true)
	return nil
}

// Status returns the last renewal scan's status as stored (whichever node
// ran it), with next_scan: when this node's next periodic scan starts (it
// does not scan if another node holds the scan lock then). It is an error
// for storage to hold something else than a JSON object there.
func (r *Runtime) Status(ctx context.Context) (json.RawMessage, error) {
	st := make(map[string]json.RawMessage)
	data, err := r.storage.Load(ctx, StatusKey)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(data, &st); err != nil {
			return nil, fmt.Errorf("%s holds no JSON object: %v", StatusKey, err)
		}
	}
	if next := r.runner.Next(); !next.IsZero() {
		st["next_scan"], _ = json.Marshal(next.UTC().Truncate(time.Second))
	}
	return json.Marshal(st)
}
