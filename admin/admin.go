// Package admin is caddy-acme's admin API, `admin.api.acme`: Kong's /acme
// endpoints on Caddy's admin listener.
//
// Caddy creates admin modules with New() on every config load, before the
// apps, so the module has no configuration: it finds the `acme` app at
// request time with ctx.AppIfConfigured and uses it through the App
// interface (the app implements it; this package does not import the app's).
// When no `acme` app is configured every route answers 404.
//
//	PATCH  /acme                           start a renewal scan (202)
//	POST   /acme                           order, or sanity-check, one host
//	GET    /acme                           status of the last renewal scan
//	GET    /acme/certificates              list (?invalid_only, ?limit, ?after)
//	GET    /acme/certificates/{host}       one certificate
//	DELETE /acme/certificates/{host}       delete it (?revoke=true revokes too)
//	GET    /acme/domains                   the domains added at run time
//	POST   /acme/domains                   add some ({"domains": [...]})
//	DELETE /acme/domains/{entry}           remove one (URL-escaped: %2A.example.com)
//
// The {host} of /acme/certificates/{host} is checked and normalised as
// POST /acme's host (checkHost): an invalid one is 400 and never reaches
// the app. A boolean query parameter (invalid_only, revoke) that is not a
// boolean is 400. Errors never show a storage path.
package admin

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // Kong's digest is SHA-1
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/acmekit/caddy-acme/internal/allowlist"
	"github.com/acmekit/caddy-acme/issuance"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// App is the acme app as the admin API sees it: the operations the routes
// call. (The app's are its issuance.Runtime's.)
type App interface {
	// TriggerScan starts a renewal scan in the background, coalesced with
	// one that is running.
	TriggerScan()
	// Order obtains host's certificate now. Its errors wrap ErrBadHost,
	// ErrNotAllowed or ErrConflict (backoff, or an order in progress) when
	// they are the cause.
	Order(ctx context.Context, host string) error
	// SanityCheck checks that the CA can reach host's HTTP-01 challenge
	// answers; the error says why not. ErrNotAllowed when the host is not
	// allowed.
	SanityCheck(ctx context.Context, host string) error
	// Hosts lists the names of the certificates in storage: from storage
	// when fresh (the first page of a listing), else possibly a recent
	// snapshot (the next pages). The slice may be shared between calls:
	// callers must not modify it.
	Hosts(ctx context.Context, fresh bool) ([]string, error)
	// Certificate describes host's stored certificate; fs.ErrNotExist
	// (wrapped) when there is none.
	Certificate(ctx context.Context, host string) (CertInfo, error)
	// Certificates is Certificate for several hosts at once (a page of
	// the list): infos[i] and errs[i] are hosts[i]'s.
	Certificates(ctx context.Context, hosts []string) (infos []CertInfo, errs []error)
	// Delete removes host's certificate from storage and from the caches,
	// revoking it at the CA first if revoke; fs.ErrNotExist when absent.
	Delete(ctx context.Context, host string, revoke bool) error
	// Status is the last renewal scan's status (JSON); nil if none ran.
	Status(ctx context.Context) (json.RawMessage, error)
	// ListDomains lists the domains added at run time (normalised entries of
	// the `domains` field's forms), sorted, as stored now.
	ListDomains(ctx context.Context) ([]string, error)
	// AddDomains adds entries to them, all or none, and returns the whole
	// list, sorted. Its errors wrap ErrInvalidDomain or ErrTooManyDomains
	// when they are the cause.
	AddDomains(ctx context.Context, entries []string) ([]string, error)
	// RemoveDomain removes one entry; ErrDomainNotFound (wrapped) when it
	// is not listed, ErrInvalidDomain when it is not a valid entry.
	RemoveDomain(ctx context.Context, entry string) error
}

// Errors an App wraps to choose the status code.
var (
	ErrBadHost    = issuance.ErrBadHost    // 400
	ErrNotAllowed = issuance.ErrNotAllowed // 400
	ErrConflict   = issuance.ErrConflict   // 409

	ErrInvalidDomain  = issuance.ErrInvalidDomain  // 400
	ErrTooManyDomains = issuance.ErrTooManyDomains // 400
	ErrDomainNotFound = issuance.ErrDomainNotFound // 404
)

// CertInfo is one certificate as GET /acme/certificates shows it: Kong's
// fields (host, issuer_cn, not_before, not_after, valid, serial_number,
// pubkey_type, digest) and caddy-acme's.
//
// In the list, a certificate that cannot be read (e.g. tampered with in
// storage) is an item with its host and Error only, instead of failing the
// whole list.
type CertInfo struct {
	Host             string    `json:"host"`
	IssuerCN         string    `json:"issuer_cn"`
	NotBefore        time.Time `json:"not_before,omitzero"`
	NotAfter         time.Time `json:"not_after,omitzero"`
	Valid            bool      `json:"valid"`
	SerialNumber     string    `json:"serial_number"`
	PubkeyType       string    `json:"pubkey_type"`
	Digest           string    `json:"digest"`
	SHA256           string    `json:"sha256"`
	SANs             []string  `json:"sans"`
	RenewalDue       bool      `json:"renewal_due"`
	RenewAt          time.Time `json:"renew_at,omitzero"`
	LastRenewalError string    `json:"last_renewal_error,omitempty"`
	// The directory URL of the CA that issued it: the app's api_uri or
	// one of its fallback CAs.
	CA string `json:"ca,omitempty"`
	// The ACME profile that CA is asked for (its profile setting); empty:
	// the CA's default.
	Profile string `json:"profile,omitempty"`
	// Error says why the stored certificate cannot be read (list items
	// only); the other fields are then empty.
	Error string `json:"error,omitempty"`
}

// NewCertInfo fills Kong's fields and the fingerprints from leaf, the
// certificate stored for host; times are UTC (RFC 3339 in JSON, where Kong
// uses the process's local time). The caller sets the renewal fields.
func NewCertInfo(host string, leaf *x509.Certificate, now time.Time) CertInfo {
	sha1sum := sha1.Sum(leaf.Raw) //nolint:gosec // Kong's digest
	sha256sum := sha256.Sum256(leaf.Raw)
	sans := append([]string{}, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		sans = append(sans, ip.String())
	}
	nb, na := leaf.NotBefore.UTC(), leaf.NotAfter.UTC()
	return CertInfo{
		Host:         host,
		IssuerCN:     leaf.Issuer.CommonName,
		NotBefore:    nb,
		NotAfter:     na,
		Valid:        nb.Before(now) && na.After(now),
		SerialNumber: colonHex(leaf.SerialNumber.Bytes()),
		PubkeyType:   pubkeyType(leaf),
		Digest:       colonHex(sha1sum[:]),
		SHA256:       colonHex(sha256sum[:]),
		SANs:         sans,
	}
}

// colonHex is b as uppercase hex bytes separated by colons, as OpenSSL
// (and Kong) print serials and digests.
func colonHex(b []byte) string {
	if len(b) == 0 {
		return "00"
	}
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = strings.ToUpper(hex.EncodeToString([]byte{c}))
	}
	return strings.Join(parts, ":")
}

// pubkeyType is OpenSSL's short name of the key's algorithm.
func pubkeyType(leaf *x509.Certificate) string {
	switch leaf.PublicKey.(type) {
	case *rsa.PublicKey:
		return "rsaEncryption"
	case *ecdsa.PublicKey:
		return "id-ecPublicKey"
	case ed25519.PublicKey:
		return "ED25519"
	}
	return leaf.PublicKeyAlgorithm.String()
}

// adminAPI is the admin.api.acme module.
type adminAPI struct {
	// find returns the app; set by Provision (tests set it directly).
	find func() (App, error)
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.acme",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision keeps ctx to find the acme app at request time: admin modules
// are provisioned before the apps.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.find = func() (App, error) {
		app, err := ctx.AppIfConfigured("acme")
		if err != nil {
			return nil, err
		}
		m, ok := app.(App)
		if !ok {
			return nil, fmt.Errorf("the acme app (%T) does not serve the admin API", app)
		}
		return m, nil
	}
	return nil
}

// Routes returns the /acme routes.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	h := caddy.AdminHandlerFunc(a.serve)
	return []caddy.AdminRoute{
		{Pattern: "/acme", Handler: h},
		{Pattern: "/acme/", Handler: h},
	}
}

// maxBody is the largest request body accepted.
const maxBody = 64 << 10

// maxDomainsBody is the largest POST /acme/domains body accepted: room
// for a list of issuance.MaxDomains entries of common length at once.
const maxDomainsBody = 8 << 20

// Pagination of GET /acme/certificates.
const (
	defaultLimit = 1000
	maxLimit     = 10000
)

func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	m, err := a.find()
	if err != nil {
		return apiErr(http.StatusNotFound, fmt.Errorf("the acme app is not configured: %v", err))
	}
	p := r.URL.Path
	switch {
	case p == "/acme" || p == "/acme/":
		switch r.Method {
		case http.MethodPatch:
			m.TriggerScan()
			return reply(w, http.StatusAccepted, message("Renewal process started successfully"))
		case http.MethodPost:
			return a.handleOrder(w, r, m)
		case http.MethodGet:
			st, err := m.Status(r.Context())
			if err != nil {
				return apiErr(http.StatusInternalServerError, fmt.Errorf("reading renewal status: %v", err))
			}
			if st == nil {
				st = json.RawMessage("null")
			}
			return reply(w, http.StatusOK, map[string]any{"data": st})
		}
		return methodNotAllowed(w, r, "GET, PATCH, POST")
	case p == "/acme/certificates" || p == "/acme/certificates/":
		if r.Method != http.MethodGet {
			return methodNotAllowed(w, r, "GET")
		}
		return a.handleList(w, r, m)
	case strings.HasPrefix(p, "/acme/certificates/") && !strings.Contains(certSegment(r), "/"):
		if r.Method != http.MethodGet && r.Method != http.MethodDelete {
			return methodNotAllowed(w, r, "GET, DELETE")
		}
		host, err := checkHost(p[len("/acme/certificates/"):])
		if err != nil {
			return apiErr(http.StatusBadRequest, err)
		}
		switch r.Method {
		case http.MethodGet:
			info, err := m.Certificate(r.Context(), host)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				return apiErr(http.StatusNotFound, fmt.Errorf("Certificate for host %s not found in storage", host)) //nolint:staticcheck // Kong's message
			case errors.Is(err, ErrBadHost):
				return apiErr(http.StatusBadRequest, errors.New(safeErr(err)))
			case err != nil:
				return apiErr(http.StatusInternalServerError, fmt.Errorf("loading certificate for host %s: %s", host, safeErr(err)))
			}
			return reply(w, http.StatusOK, map[string]any{"data": info})
		default: // DELETE
			revoke, err := queryBool(r.URL.Query(), "revoke")
			if err != nil {
				return apiErr(http.StatusBadRequest, err)
			}
			err = m.Delete(r.Context(), host, revoke)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				return apiErr(http.StatusNotFound, fmt.Errorf("Certificate for host %s not found in storage", host)) //nolint:staticcheck // Kong's message
			case errors.Is(err, ErrBadHost):
				return apiErr(http.StatusBadRequest, errors.New(safeErr(err)))
			case err != nil:
				return apiErr(http.StatusInternalServerError, fmt.Errorf("deleting certificate for host %s: %s", host, safeErr(err)))
			}
			return reply(w, http.StatusOK, message(fmt.Sprintf("certificate for host %s is deleted", host)))
		}
	case p == "/acme/domains" || p == "/acme/domains/":
		switch r.Method {
		case http.MethodGet:
			list, err := m.ListDomains(r.Context())
			if err != nil {
				return apiErr(http.StatusInternalServerError, fmt.Errorf("listing domains: %v", err))
			}
			return reply(w, http.StatusOK, domainList{Data: list})
		case http.MethodPost:
			return handleAddDomains(w, r, m)
		}
		return methodNotAllowed(w, r, "GET, POST")
	case strings.HasPrefix(p, "/acme/domains/") && !strings.Contains(p[len("/acme/domains/"):], "/"):
		if r.Method != http.MethodDelete {
			return methodNotAllowed(w, r, "DELETE")
		}
		entry := p[len("/acme/domains/"):]
		err := m.RemoveDomain(r.Context(), entry)
		switch {
		case err == nil:
			return reply(w, http.StatusOK, message(fmt.Sprintf("domain %s is removed", entry)))
		case errors.Is(err, ErrDomainNotFound):
			return apiErr(http.StatusNotFound, err)
		case errors.Is(err, ErrInvalidDomain):
			return apiErr(http.StatusBadRequest, err)
		}
		return apiErr(http.StatusInternalServerError, fmt.Errorf("removing domain %s: %v", entry, err))
	}
	return apiErr(http.StatusNotFound, fmt.Errorf("resource not found: %s", p))
}

// domainList is GET and POST /acme/domains's reply.
type domainList struct {
	Data []string `json:"data"`
}

// domainsRequest is POST /acme/domains's body.
type domainsRequest struct {
	Domains []string `json:"domains"`
}

// handleAddDomains adds the entries of a JSON body {"domains": [...]}:
// every entry is checked first, and one bad entry refuses them all.
func handleAddDomains(w http.ResponseWriter, r *http.Request, m App) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxDomainsBody)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return apiErr(http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", maxDomainsBody))
		}
		return apiErr(http.StatusBadRequest, fmt.Errorf("reading request body: %v", err))
	}
	var req domainsRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return apiErr(http.StatusBadRequest, fmt.Errorf(`malformed JSON body, want {"domains": ["example.com", ...]}: %v`, err))
	}
	if dec.More() {
		return apiErr(http.StatusBadRequest, errors.New("malformed JSON body: more than one JSON value"))
	}
	if len(req.Domains) == 0 {
		return apiErr(http.StatusBadRequest, errors.New(`domains must be a non-empty list: {"domains": ["example.com", ...]}`))
	}
	for i, entry := range req.Domains {
		if err := allowlist.Validate(entry); err != nil {
			return apiErr(http.StatusBadRequest, fmt.Errorf("domains[%d]: %v; nothing was added", i, err))
		}
	}
	list, err := m.AddDomains(r.Context(), req.Domains)
	switch {
	case err == nil:
		return reply(w, http.StatusCreated, domainList{Data: list})
	case errors.Is(err, ErrInvalidDomain), errors.Is(err, ErrTooManyDomains):
		return apiErr(http.StatusBadRequest, fmt.Errorf("%v; nothing was added", err))
	}
	return apiErr(http.StatusInternalServerError, fmt.Errorf("adding domains: %v", err))
}

// orderRequest is POST /acme's body, JSON or form as Kong.
type orderRequest struct {
	Host any `json:"host"`
	Test any `json:"test_http_challenge_flow"`
}

func (a *adminAPI) handleOrder(w http.ResponseWriter, r *http.Request, m App) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return apiErr(http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", maxBody))
		}
		return apiErr(http.StatusBadRequest, fmt.Errorf("reading request body: %v", err))
	}
	var req orderRequest
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case ct == "application/x-www-form-urlencoded" || ct == "multipart/form-data":
		if ct == "multipart/form-data" {
			return apiErr(http.StatusUnsupportedMediaType, errors.New("use JSON or application/x-www-form-urlencoded"))
		}
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return apiErr(http.StatusBadRequest, fmt.Errorf("malformed form body: %v", err))
		}
		if vals.Has("host") {
			req.Host = vals.Get("host")
		}
		if vals.Has("test_http_challenge_flow") {
			req.Test = vals.Get("test_http_challenge_flow")
		}
	case len(strings.TrimSpace(string(body))) == 0:
	default:
		if err := json.Unmarshal(body, &req); err != nil {
			return apiErr(http.StatusBadRequest, fmt.Errorf("malformed JSON body: %v", err))
		}
	}

	raw, ok := req.Host.(string)
	if !ok {
		return apiErr(http.StatusBadRequest, errSingleHost)
	}
	// the body's host may be padded with spaces (a form field); the path's
	// may not
	host, err := checkHost(strings.TrimSpace(raw))
	if err != nil {
		return apiErr(http.StatusBadRequest, err)
	}
	test, err := truthy(req.Test)
	if err != nil {
		return apiErr(http.StatusBadRequest, fmt.Errorf("test_http_challenge_flow: %v", err))
	}

	if test {
		if err := m.SanityCheck(r.Context(), host); err != nil {
			return apiErr(http.StatusBadRequest, fmt.Errorf("problem found running sanity check for %s: %v", host, err))
		}
		return reply(w, http.StatusOK, message(fmt.Sprintf("sanity test for host %s passed", host)))
	}

	err = m.Order(r.Context(), host)
	switch {
	case err == nil:
		return reply(w, http.StatusCreated, message(fmt.Sprintf("certificate for host %s is created", host)))
	case errors.Is(err, ErrBadHost), errors.Is(err, ErrNotAllowed):
		return apiErr(http.StatusBadRequest, err)
	case errors.Is(err, ErrConflict):
		return apiErr(http.StatusConflict, fmt.Errorf("failed to update certificate: %v", err))
	}
	if _, ok := errors.AsType[issuance.BudgetError](err); ok {
		return apiErr(http.StatusTooManyRequests, fmt.Errorf("failed to update certificate: %v", err))
	}
	if _, ok := errors.AsType[issuance.PauseError](err); ok {
		return apiErr(http.StatusServiceUnavailable, fmt.Errorf("failed to update certificate: %v", err))
	}
	return apiErr(http.StatusInternalServerError, fmt.Errorf("failed to update certificate: %v", err))
}

var errSingleHost = errors.New("host must be provided and containing a single domain")

// checkHost checks that host is one host name or IP address (an IPv6
// address also in brackets), without port, or a wildcard subject `*.<domain>` (the app decides whether it may
// have a certificate), and returns it normalised: lower case, without its
// trailing dot. POST /acme's host and the {host} of
// /acme/certificates/{host} are checked here, so that the app gets the
// same name for both (the name of the storage keys, of the certificate in
// memory and of the change published to the other nodes). The error does
// not repeat a long host.
func checkHost(host string) (string, error) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" || strings.ContainsAny(host, " ,/") {
		return "", errSingleHost
	}
	if len(host) > maxHostLen {
		return "", fmt.Errorf("invalid host: longer than %d octets (%d)", maxHostLen, len(host))
	}
	if strings.Contains(host, ":") {
		if ip, ok := allowlist.NormalizeIP(host); ok && strings.Contains(ip, ":") {
			return ip, nil // an IPv6 address, in the form of the domains entries
		}
		return "", errors.New("port is not allowed in host")
	}
	name := strings.TrimPrefix(host, "*.") // a wildcard certificate's subject
	if strings.Contains(name, "*") {
		return "", errors.New("wildcard host is not allowed but as *.x, the subject of a wildcard certificate (wildcard_certificates, with challenges.dns)")
	}
	if strings.HasSuffix(host, ".") {
		return "", fmt.Errorf("invalid host %q: empty label (repeated trailing dot)", host)
	}
	if err := allowlist.Validate(name); err != nil {
		// A single name, but not a host name or IPv4 address: never
		// passed on (it would end up in storage keys and in the sanity
		// check's URL).
		return "", fmt.Errorf("invalid host: %v", err)
	}
	return host, nil
}

// maxHostLen is the longest host name, in octets (RFC 1035).
const maxHostLen = 253

// certSegment is what follows /acme/certificates/ in the request's
// escaped path: a %2F in a host is a character of the host (invalid), not
// a path separator.
func certSegment(r *http.Request) string {
	p := r.URL.EscapedPath()
	if !strings.HasPrefix(p, "/acme/certificates/") {
		return r.URL.Path[len("/acme/certificates/"):]
	}
	return p[len("/acme/certificates/"):]
}

// parseBool reads a boolean: strconv.ParseBool's forms, and yes/no and
// on/off in any case.
func parseBool(s string) (bool, error) {
	if b, err := strconv.ParseBool(s); err == nil {
		return b, nil
	}
	switch strings.ToLower(s) {
	case "yes", "on":
		return true, nil
	case "no", "off":
		return false, nil
	}
	if len(s) > 32 {
		s = s[:32] + "…"
	}
	return false, fmt.Errorf("expected a boolean (true/false, 1/0, yes/no, on/off), got %q", s)
}

// queryBool reads the boolean query parameter name: false when absent or
// empty, an error when a value is not a boolean or two values disagree.
func queryBool(q url.Values, name string) (bool, error) {
	var out bool
	for i, v := range q[name] {
		b := false
		if v != "" {
			var err error
			if b, err = parseBool(v); err != nil {
				return false, fmt.Errorf("%s: %v", name, err)
			}
		}
		if i > 0 && b != out {
			return false, fmt.Errorf("%s: conflicting values", name)
		}
		out = b
	}
	return out, nil
}

// safeErr is err's message without the file paths it names (an
// *fs.PathError's or *os.LinkError's, e.g. a file system storage's): the
// admin API does not show where storage lives.
func safeErr(err error) string {
	msg := err.Error()
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		switch e := e.(type) {
		case *fs.PathError:
			msg = hidePath(msg, e.Path)
		case *os.LinkError:
			msg = hidePath(hidePath(msg, e.Old), e.New)
		}
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return msg
}

func hidePath(msg, path string) string {
	if path == "" {
		return msg
	}
	return strings.ReplaceAll(msg, path, "(storage path)")
}

// truthy reads a boolean given as JSON bool, string or number.
func truthy(v any) (bool, error) {
	switch v := v.(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string:
		if v == "" {
			return false, nil
		}
		return parseBool(v)
	case float64:
		return v != 0, nil
	}
	return false, fmt.Errorf("expected a boolean, got %v", v)
}

// certList is GET /acme/certificates's reply.
type certList struct {
	Data []CertInfo `json:"data"`
	Next string     `json:"next,omitempty"`
}

// handleList lists certificates in host order, limit at a time after the
// host `after`; `next` is the `after` of the next page. Certificates are
// loaded one page at a time, in one batch.
func (a *adminAPI) handleList(w http.ResponseWriter, r *http.Request, m App) error {
	q := r.URL.Query()
	invalidOnly, err := queryBool(q, "invalid_only")
	if err != nil {
		return apiErr(http.StatusBadRequest, err)
	}
	limit := defaultLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxLimit {
			return apiErr(http.StatusBadRequest, fmt.Errorf("limit: expected a number from 1 to %d, got %q", maxLimit, v))
		}
		limit = n
	}
	after := strings.ToLower(q.Get("after"))

	hosts, err := m.Hosts(r.Context(), after == "")
	if err != nil {
		return apiErr(http.StatusInternalServerError, fmt.Errorf("listing certificates: %s", safeErr(err)))
	}
	if !slices.IsSorted(hosts) {
		hosts = slices.Sorted(slices.Values(hosts)) // a copy: the App's slice may be shared
	}
	start := sort.SearchStrings(hosts, after)
	if start < len(hosts) && hosts[start] == after && after != "" {
		start++
	}
	out := certList{Data: []CertInfo{}}
	i := start // the next host to look at
	for i < len(hosts) && len(out.Data) < limit {
		// a page's certificates are read in one batch; with invalid_only,
		// at least listBatch at a time, as most are skipped
		n := limit - len(out.Data)
		if invalidOnly {
			n = max(n, listBatch)
		}
		batch := hosts[i:min(i+n, len(hosts))]
		infos, errs := m.Certificates(r.Context(), batch)
		for j, host := range batch {
			if len(out.Data) == limit {
				break
			}
			i++
			if errors.Is(errs[j], fs.ErrNotExist) {
				continue // deleted meanwhile
			}
			if errs[j] != nil {
				// one unreadable certificate does not hide the others
				out.Data = append(out.Data, CertInfo{Host: host, Error: safeErr(errs[j])})
				continue
			}
			if invalidOnly && infos[j].Valid {
				continue
			}
			infos[j].Host = host
			out.Data = append(out.Data, infos[j])
		}
	}
	if len(out.Data) == limit && i < len(hosts) {
		out.Next = out.Data[limit-1].Host
	}
	return reply(w, http.StatusOK, out)
}

// listBatch is the fewest certificates handleList reads at once for
// invalid_only.
const listBatch = 100

func message(s string) map[string]string { return map[string]string{"message": s} }

func reply(w http.ResponseWriter, status int, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return apiErr(http.StatusInternalServerError, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(data, '\n'))
	return err
}

func apiErr(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err}
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) error {
	w.Header().Set("Allow", allow)
	return apiErr(http.StatusMethodNotAllowed, fmt.Errorf("method not allowed: %s", r.Method))
}

// Interface guards
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
