package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/acmekit/caddy-acme/issuance"
)

// fakeApp is an in-memory App.
type fakeApp struct {
	mu        sync.Mutex
	scans     int
	orders    []string
	orderErr  error
	sanityErr error
	certs     map[string]CertInfo
	deleted   map[string]bool // host -> revoke
	status    json.RawMessage
	batches   []int    // sizes of the Certificates calls
	hosts     []string // Hosts' answer if set, else the names of certs
	domains   []string // the domain list, sorted
	added     [][]string
	removed   []string
	domainErr error            // the answer of the domain operations if set
	certErrs  map[string]error // Certificate's error for a host, if set
}

func (f *fakeApp) TriggerScan() { f.mu.Lock(); f.scans++; f.mu.Unlock() }

func (f *fakeApp) Order(_ context.Context, host string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.orders = append(f.orders, host)
	return f.orderErr
}

func (f *fakeApp) SanityCheck(context.Context, string) error { return f.sanityErr }

func (f *fakeApp) Hosts(context.Context, bool) ([]string, error) {
	if f.hosts != nil {
		return f.hosts, nil
	}
	var hosts []string
	for h := range f.certs {
		hosts = append(hosts, h)
	}
	return hosts, nil
}

func (f *fakeApp) Certificate(_ context.Context, host string) (CertInfo, error) {
	if err, ok := f.certErrs[host]; ok {
		return CertInfo{}, err
	}
	c, ok := f.certs[host]
	if !ok {
		return CertInfo{}, fmt.Errorf("loading %s: %w", host, fs.ErrNotExist)
	}
	return c, nil
}

func (f *fakeApp) Certificates(ctx context.Context, hosts []string) ([]CertInfo, []error) {
	f.mu.Lock()
	f.batches = append(f.batches, len(hosts))
	f.mu.Unlock()
	infos, errs := make([]CertInfo, len(hosts)), make([]error, len(hosts))
	for i, host := range hosts {
		infos[i], errs[i] = f.Certificate(ctx, host)
	}
	return infos, errs
}

func (f *fakeApp) Delete(_ context.Context, host string, revoke bool) error {
	if _, ok := f.certs[host]; !ok {
		return fs.ErrNotExist
	}
	delete(f.certs, host)
	f.deleted[host] = revoke
	return nil
}

func (f *fakeApp) Status(context.Context) (json.RawMessage, error) { return f.status, nil }

func (f *fakeApp) ListDomains(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.domainErr != nil {
		return nil, f.domainErr
	}
	return append([]string{}, f.domains...), nil
}

func (f *fakeApp) AddDomains(_ context.Context, entries []string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.added = append(f.added, entries)
	if f.domainErr != nil {
		return nil, f.domainErr
	}
	for _, e := range entries {
		if !slices.Contains(f.domains, e) {
			f.domains = append(f.domains, e)
		}
	}
	slices.Sort(f.domains)
	return append([]string{}, f.domains...), nil
}

func (f *fakeApp) RemoveDomain(_ context.Context, entry string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, entry)
	if f.domainErr != nil {
		return f.domainErr
	}
	i := slices.Index(f.domains, entry)
	if i < 0 {
		return fmt.Errorf("%w: %s", ErrDomainNotFound, entry)
	}
	f.domains = slices.Delete(f.domains, i, i+1)
	return nil
}

func newFake() *fakeApp {
	now := time.Now()
	certs := map[string]CertInfo{}
	for i, h := range []string{"a.example.com", "b.example.com", "c.example.com", "expired.example.com"} {
		c := CertInfo{Host: h, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), Valid: true, SerialNumber: fmt.Sprint(i)}
		if h == "expired.example.com" {
			c.Valid = false
		}
		certs[h] = c
	}
	return &fakeApp{certs: certs, deleted: map[string]bool{}, domains: []string{"*.tenant.example.net", "shop.example.org"}}
}

// serve runs one request through the module's handler and writes errors as
// Caddy's admin server does: the status and {"error": message}.
func serve(t *testing.T, a *adminAPI, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	if err := a.serve(rec, req); err != nil {
		var apiErr caddy.APIError
		if !errors.As(err, &apiErr) {
			t.Fatalf("handler returned %T %v, want caddy.APIError", err, err)
		}
		rec.Header().Set("Content-Type", "application/json")
		rec.WriteHeader(apiErr.HTTPStatus)
		json.NewEncoder(rec).Encode(map[string]string{"error": apiErr.Err.Error()}) //nolint:errcheck
	}
	return rec
}

func TestRoutes(t *testing.T) {
	a := &adminAPI{}
	var patterns []string
	for _, r := range a.Routes() {
		patterns = append(patterns, r.Pattern)
	}
	if strings.Join(patterns, " ") != "/acme /acme/" {
		t.Fatalf("routes = %v", patterns)
	}
	if id := (adminAPI{}).CaddyModule().ID; id != "admin.api.acme" {
		t.Fatalf("module ID %s", id)
	}
}

func TestHandlers(t *testing.T) {
	big := `{"host":"` + strings.Repeat("a", maxBody) + `"}`
	for _, tc := range []struct {
		name        string
		method      string
		target      string
		contentType string
		body        string
		setup       func(*fakeApp)
		status      int
		want        string // substring of the body
		check       func(*testing.T, *fakeApp)
	}{
		{name: "patch starts a scan", method: "PATCH", target: "/acme", status: 202,
			want: `{"message":"Renewal process started successfully"}`,
			check: func(t *testing.T, f *fakeApp) {
				if f.scans != 1 {
					t.Fatalf("scans = %d", f.scans)
				}
			}},
		{name: "wrong method on /acme", method: "PUT", target: "/acme", status: 405, want: `"error":"method not allowed: PUT"`},
		{name: "wrong method on list", method: "POST", target: "/acme/certificates", status: 405},
		{name: "wrong method on one", method: "PATCH", target: "/acme/certificates/a.example.com", status: 405},
		{name: "unknown path", method: "GET", target: "/acme/nope", status: 404},
		{name: "order json", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"new.example.com"}`,
			status: 201, want: `{"message":"certificate for host new.example.com is created"}`,
			check: func(t *testing.T, f *fakeApp) {
				if len(f.orders) != 1 || f.orders[0] != "new.example.com" {
					t.Fatalf("orders = %v", f.orders)
				}
			}},
		{name: "order form", method: "POST", target: "/acme", contentType: "application/x-www-form-urlencoded", body: `host=New.Example.com`,
			status: 201, want: `certificate for host new.example.com is created`},
		{name: "missing host", method: "POST", target: "/acme", contentType: "application/json", body: `{}`,
			status: 400, want: `"error":"host must be provided and containing a single domain"`},
		{name: "empty body", method: "POST", target: "/acme", status: 400, want: `host must be provided`},
		{name: "host not a string", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":["a","b"]}`,
			status: 400, want: `host must be provided`},
		{name: "port", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"a.example.com:443"}`,
			status: 400, want: `"error":"port is not allowed in host"`},
		{name: "wildcard subject", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"*.Example.com"}`,
			status: 201, want: `{"message":"certificate for host *.example.com is created"}`,
			check: func(t *testing.T, f *fakeApp) {
				if len(f.orders) != 1 || f.orders[0] != "*.example.com" {
					t.Fatalf("orders = %v", f.orders)
				}
			}},
		{name: "ipv6", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"[2001:DB8:0::1]"}`,
			status: 201, want: `{"message":"certificate for host 2001:db8::1 is created"}`},
		{name: "ipv6 with port", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"[2001:db8::1]:443"}`,
			status: 400, want: `port is not allowed in host`},
		{name: "wildcard inside", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"a.*.example.com"}`,
			status: 400, want: `wildcard host is not allowed but as *.x`},
		{name: "wildcard twice", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"*.*.example.com"}`,
			status: 400, want: `wildcard host is not allowed`},
		{name: "wildcard alone", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"*"}`,
			status: 400, want: `wildcard host is not allowed`},
		{name: "not allowed", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"evil.example"}`,
			setup:  func(f *fakeApp) { f.orderErr = fmt.Errorf("evil.example: %w", ErrNotAllowed) },
			status: 400, want: `host not allowed`},
		{name: "malformed json", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":`,
			status: 400, want: `malformed JSON`},
		{name: "too large", method: "POST", target: "/acme", contentType: "application/json", body: big, status: 413},
		{name: "backoff", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"a.example.com"}`,
			setup:  func(f *fakeApp) { f.orderErr = fmt.Errorf("please try again in 10 seconds: %w", ErrConflict) },
			status: 409, want: `please try again in 10 seconds`},
		{name: "ca error", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"a.example.com"}`,
			setup:  func(f *fakeApp) { f.orderErr = errors.New("urn:ietf:params:acme:error:rejectedIdentifier") },
			status: 500, want: `"error":"failed to update certificate: urn:ietf:params:acme:error:rejectedIdentifier"`},
		{name: "over budget", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"a.example.com"}`,
			setup: func(f *fakeApp) {
				f.orderErr = fmt.Errorf("obtaining certificate: %w", issuance.BudgetError{Name: "a.example.com", Domain: "example.com", Limit: 50})
			},
			status: 429, want: `example.com`},
		{name: "ca paused", method: "POST", target: "/acme", contentType: "application/json", body: `{"host":"a.example.com"}`,
			setup: func(f *fakeApp) {
				f.orderErr = issuance.PauseError("new certificate orders are paused for 5 more seconds")
			},
			status: 503, want: `paused for 5 more seconds`},
		{name: "sanity passed", method: "POST", target: "/acme", contentType: "application/json",
			body:   `{"host":"a.example.com","test_http_challenge_flow":true}`,
			status: 200, want: `{"message":"sanity test for host a.example.com passed"}`,
			check: func(t *testing.T, f *fakeApp) {
				if len(f.orders) != 0 {
					t.Fatalf("sanity check ordered %v", f.orders)
				}
			}},
		{name: "sanity passed form string", method: "POST", target: "/acme", contentType: "application/x-www-form-urlencoded",
			body: `host=a.example.com&test_http_challenge_flow=true`, status: 200, want: `passed`},
		{name: "sanity failed", method: "POST", target: "/acme", contentType: "application/json",
			body:   `{"host":"a.example.com","test_http_challenge_flow":"true"}`,
			setup:  func(f *fakeApp) { f.sanityErr = errors.New("timeout") },
			status: 400, want: `"error":"problem found running sanity check for a.example.com: timeout"`},
		{name: "sanity port", method: "POST", target: "/acme", contentType: "application/json",
			body: `{"host":"a.example.com:80","test_http_challenge_flow":true}`, status: 400, want: `port is not allowed`},
		{name: "bad boolean", method: "POST", target: "/acme", contentType: "application/json",
			body: `{"host":"a.example.com","test_http_challenge_flow":"maybe"}`, status: 400},
		{name: "list", method: "GET", target: "/acme/certificates", status: 200,
			check: func(t *testing.T, f *fakeApp) {}},
		{name: "list bad limit", method: "GET", target: "/acme/certificates?limit=0", status: 400},
		{name: "one", method: "GET", target: "/acme/certificates/a.example.com", status: 200, want: `"data":{"host":"a.example.com"`},
		{name: "one absent", method: "GET", target: "/acme/certificates/zzz.example.com", status: 404,
			want: `"error":"Certificate for host zzz.example.com not found in storage"`},
		{name: "delete", method: "DELETE", target: "/acme/certificates/b.example.com?revoke=true", status: 200,
			want: `certificate for host b.example.com is deleted`,
			check: func(t *testing.T, f *fakeApp) {
				if revoke, ok := f.deleted["b.example.com"]; !ok || !revoke {
					t.Fatalf("deleted = %v", f.deleted)
				}
			}},
		{name: "delete absent", method: "DELETE", target: "/acme/certificates/zzz.example.com", status: 404},
		{name: "status none", method: "GET", target: "/acme", status: 200, want: `{"data":null}`},
		{name: "status", method: "GET", target: "/acme/", status: 200,
			setup: func(f *fakeApp) { f.status = json.RawMessage(`{"checked":4}`) },
			want:  `{"data":{"checked":4}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			if tc.setup != nil {
				tc.setup(f)
			}
			a := &adminAPI{find: func() (App, error) { return f, nil }}
			req := httptest.NewRequest(tc.method, tc.target, strings.NewReader(tc.body))
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			rec := serve(t, a, req)
			if rec.Code != tc.status {
				t.Fatalf("status = %d, want %d; body %s", rec.Code, tc.status, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type = %q", ct)
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("body is not JSON: %s", rec.Body)
			}
			if !strings.Contains(rec.Body.String(), tc.want) {
				t.Fatalf("body = %s, want it to contain %s", rec.Body, tc.want)
			}
			if tc.status == 405 && rec.Header().Get("Allow") == "" {
				t.Fatal("405 without Allow")
			}
			if tc.check != nil {
				tc.check(t, f)
			}
		})
	}
}

func TestList(t *testing.T) {
	f := newFake()
	a := &adminAPI{find: func() (App, error) { return f, nil }}
	list := func(target string) certList { return getList(t, a, target) }
	hosts := func(l certList) string {
		var h []string
		for _, c := range l.Data {
			h = append(h, c.Host)
		}
		return strings.Join(h, " ")
	}
	for _, tc := range []struct {
		name, target, hosts, next string
	}{
		{"all", "/acme/certificates", "a.example.com b.example.com c.example.com expired.example.com", ""},
		{"invalid only", "/acme/certificates?invalid_only=true", "expired.example.com", ""},
		{"invalid only any truthy", "/acme/certificates?invalid_only=yes", "expired.example.com", ""},
		{"first page", "/acme/certificates?limit=2", "a.example.com b.example.com", "b.example.com"},
		{"second page", "/acme/certificates?limit=2&after=b.example.com", "c.example.com expired.example.com", ""},
		{"after absent host", "/acme/certificates?after=bb.example.com", "c.example.com expired.example.com", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := list(tc.target)
			if got := hosts(l); got != tc.hosts || l.Next != tc.next {
				t.Fatalf("hosts %q next %q, want %q next %q", got, l.Next, tc.hosts, tc.next)
			}
		})
	}
	// an empty list is [] not null
	f.certs = map[string]CertInfo{}
	rec := serve(t, a, httptest.NewRequest("GET", "/acme/certificates", nil))
	if !strings.Contains(rec.Body.String(), `"data":[]`) {
		t.Fatalf("empty list: %s", rec.Body)
	}
}

// TestListBatches: a page's certificates are read in one Certificates call
// of the page's size (at least listBatch with invalid_only, which skips
// most), a host deleted since the listing is skipped and the page still
// filled, and `next` is set only when hosts are left.
func TestListBatches(t *testing.T) {
	f := newFake()
	a := &adminAPI{find: func() (App, error) { return f, nil }}
	f.certs = map[string]CertInfo{}
	for i := range 250 {
		f.certs[fmt.Sprintf("h%03d.example.com", i)] = CertInfo{Valid: i != 200}
	}
	list := func(target string) certList {
		t.Helper()
		f.batches = nil
		return getList(t, a, target)
	}

	l := list("/acme/certificates?limit=10")
	if len(l.Data) != 10 || l.Next != "h009.example.com" || !slices.Equal(f.batches, []int{10}) {
		t.Fatalf("limit 10: %d certificates, next %q, batches %v; want 10, h009, [10]", len(l.Data), l.Next, f.batches)
	}
	l = list("/acme/certificates?limit=10&after=h239.example.com")
	if len(l.Data) != 10 || l.Next != "" || !slices.Equal(f.batches, []int{10}) {
		t.Fatalf("last page: %d certificates, next %q, batches %v; want 10, none, [10]", len(l.Data), l.Next, f.batches)
	}
	l = list("/acme/certificates?invalid_only=true&limit=1")
	if len(l.Data) != 1 || l.Data[0].Host != "h200.example.com" || l.Next != "h200.example.com" || !slices.Equal(f.batches, []int{100, 100, 50}) {
		t.Fatalf("invalid_only: %+v, batches %v; want h200 (next h200), batches [100 100 50]", l, f.batches)
	}

	// listed, then deleted: the page reads one more batch to fill up
	f.hosts = []string{"h000.example.com", "gone.example.com", "h001.example.com", "h002.example.com"}
	l = list("/acme/certificates?limit=2")
	if len(l.Data) != 2 || l.Data[1].Host != "h001.example.com" || l.Next != "h001.example.com" || !slices.Equal(f.batches, []int{2, 1}) {
		t.Fatalf("with a deleted host: %+v, batches %v; want h000 h001, next h001, batches [2 1]", l, f.batches)
	}
}

// getList is GET target, a list that must answer 200.
func getList(t *testing.T, a *adminAPI, target string) certList {
	t.Helper()
	rec := serve(t, a, httptest.NewRequest("GET", target, nil))
	if rec.Code != 200 {
		t.Fatalf("%s: %d %s", target, rec.Code, rec.Body)
	}
	var l certList
	if err := json.Unmarshal(rec.Body.Bytes(), &l); err != nil {
		t.Fatal(err)
	}
	return l
}

func TestNotConfigured(t *testing.T) {
	a := &adminAPI{}
	if err := a.Provision(caddy.Context{Context: t.Context()}); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/acme", "/acme/certificates", "/acme/certificates/a.example.com"} {
		for _, method := range []string{"GET", "PATCH", "POST", "DELETE"} {
			rec := serve(t, a, httptest.NewRequest(method, target, nil))
			if rec.Code != 404 || !strings.Contains(rec.Body.String(), `"error":"the acme app is not configured`) {
				t.Fatalf("%s %s: %d %s, want 404", method, target, rec.Code, rec.Body)
			}
		}
	}
}

func TestNewCertInfo(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0x0a0bff),
		Subject:      pkix.Name{CommonName: "a.example.com"},
		Issuer:       pkix.Name{CommonName: "Test CA"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		DNSNames:     []string{"a.example.com"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	info := NewCertInfo("a.example.com", leaf, now)
	if info.SerialNumber != "0A:0B:FF" || info.PubkeyType != "id-ecPublicKey" || !info.Valid ||
		info.IssuerCN != "a.example.com" || len(info.Digest) != 59 || len(info.SHA256) != 95 ||
		strings.ToUpper(info.Digest) != info.Digest || info.NotAfter.Location() != time.UTC {
		t.Fatalf("info = %+v", info)
	}
	if got := NewCertInfo("a.example.com", leaf, now.Add(2*time.Hour)); got.Valid {
		t.Fatal("expired certificate valid")
	}
	data, _ := json.Marshal(info)
	for _, f := range []string{"host", "issuer_cn", "not_before", "not_after", "valid", "serial_number", "pubkey_type", "digest", "sha256", "sans", "renewal_due"} {
		if !strings.Contains(string(data), `"`+f+`":`) {
			t.Fatalf("JSON %s lacks %s", data, f)
		}
	}
}

// TestDomainsRoutes: GET, POST and DELETE /acme/domains answer with
// Caddy's JSON errors and the documented statuses; a POST with any bad
// entry is refused before the app sees it, naming the entry; DELETE takes
// the entry URL-escaped.
func TestDomainsRoutes(t *testing.T) {
	big := `{"domains":["` + strings.Repeat("a", maxDomainsBody) + `"]}`
	for _, tc := range []struct {
		name    string
		method  string
		target  string
		body    string
		setup   func(*fakeApp)
		status  int
		want    string // substring of the body
		allow   string // the Allow header of a 405
		added   []string
		removed string
	}{
		{name: "list", method: "GET", target: "/acme/domains", status: 200,
			want: `{"data":["*.tenant.example.net","shop.example.org"]}`},
		{name: "list slash", method: "GET", target: "/acme/domains/", status: 200, want: `"data":[`},
		{name: "list empty", method: "GET", target: "/acme/domains", setup: func(f *fakeApp) { f.domains = nil },
			status: 200, want: `{"data":[]}`},
		{name: "list storage error", method: "GET", target: "/acme/domains",
			setup:  func(f *fakeApp) { f.domainErr = errors.New("redis down") },
			status: 500, want: `"error":"listing domains: redis down"`},
		{name: "add", method: "POST", target: "/acme/domains", body: `{"domains":["new.example.com","*.b.example"]}`,
			status: 201, want: `{"data":["*.b.example","*.tenant.example.net","new.example.com","shop.example.org"]}`,
			added: []string{"new.example.com", "*.b.example"}},
		{name: "add duplicate", method: "POST", target: "/acme/domains", body: `{"domains":["shop.example.org"]}`,
			status: 201, want: `{"data":["*.tenant.example.net","shop.example.org"]}`, added: []string{"shop.example.org"}},
		{name: "add bad entry", method: "POST", target: "/acme/domains", body: `{"domains":["ok.example","a.*.example"]}`,
			status: 400, want: `"error":"domains[1]: domain \"a.*.example\": invalid wildcard: must be placed at leftmost or rightmost label; nothing was added"`},
		{name: "add port", method: "POST", target: "/acme/domains", body: `{"domains":["shop.example.org:443"]}`,
			status: 400, want: `must not have a port`},
		{name: "add empty list", method: "POST", target: "/acme/domains", body: `{"domains":[]}`, status: 400, want: `non-empty list`},
		{name: "add no body", method: "POST", target: "/acme/domains", status: 400, want: `malformed JSON body`},
		{name: "add unknown field", method: "POST", target: "/acme/domains", body: `{"domain":["a.example"]}`,
			status: 400, want: `unknown field`},
		{name: "add not strings", method: "POST", target: "/acme/domains", body: `{"domains":[1]}`, status: 400, want: `malformed JSON`},
		{name: "add two values", method: "POST", target: "/acme/domains", body: `{"domains":["a.example"]} {}`, status: 400},
		{name: "add too large", method: "POST", target: "/acme/domains", body: big, status: 413},
		{name: "add too many", method: "POST", target: "/acme/domains", body: `{"domains":["a.example"]}`,
			setup:  func(f *fakeApp) { f.domainErr = fmt.Errorf("%w: at most 100000", ErrTooManyDomains) },
			status: 400, want: `too many domain entries: at most 100000; nothing was added`, added: []string{"a.example"}},
		{name: "add unreadable record", method: "POST", target: "/acme/domains", body: `{"domains":["a.example"]}`,
			setup:  func(f *fakeApp) { f.domainErr = errors.New("stored domain list unreadable") },
			status: 500, want: `adding domains: stored domain list unreadable`, added: []string{"a.example"}},
		{name: "delete escaped wildcard", method: "DELETE", target: "/acme/domains/%2A.tenant.example.net", status: 200,
			want: `{"message":"domain *.tenant.example.net is removed"}`, removed: "*.tenant.example.net"},
		{name: "delete", method: "DELETE", target: "/acme/domains/shop.example.org", status: 200, removed: "shop.example.org"},
		{name: "delete absent", method: "DELETE", target: "/acme/domains/zzz.example", status: 404,
			want: `"error":"domain entry not found: zzz.example"`, removed: "zzz.example"},
		{name: "delete invalid", method: "DELETE", target: "/acme/domains/a.%2A.example",
			setup:  func(f *fakeApp) { f.domainErr = fmt.Errorf("%w: a.*.example", ErrInvalidDomain) },
			status: 400, removed: "a.*.example"},
		{name: "delete slash", method: "DELETE", target: "/acme/domains/a/b", status: 404},
		{name: "wrong method on list", method: "PUT", target: "/acme/domains", status: 405, allow: "GET, POST"},
		{name: "delete the list", method: "DELETE", target: "/acme/domains", status: 405, allow: "GET, POST"},
		{name: "wrong method on one", method: "GET", target: "/acme/domains/shop.example.org", status: 405, allow: "DELETE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			if tc.setup != nil {
				tc.setup(f)
			}
			a := &adminAPI{find: func() (App, error) { return f, nil }}
			req := httptest.NewRequest(tc.method, tc.target, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			rec := serve(t, a, req)
			if rec.Code != tc.status {
				t.Fatalf("status = %d, want %d; body %s", rec.Code, tc.status, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" || !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("Content-Type %q, body %s", ct, rec.Body)
			}
			if !strings.Contains(rec.Body.String(), tc.want) {
				t.Fatalf("body = %s, want it to contain %s", rec.Body, tc.want)
			}
			if got := rec.Header().Get("Allow"); got != tc.allow {
				t.Fatalf("Allow = %q, want %q", got, tc.allow)
			}
			if tc.added == nil && len(f.added) != 0 || tc.added != nil && (len(f.added) != 1 || !slices.Equal(f.added[0], tc.added)) {
				t.Fatalf("AddDomains got %q, want %q", f.added, tc.added)
			}
			if tc.removed == "" && len(f.removed) != 0 || tc.removed != "" && !slices.Equal(f.removed, []string{tc.removed}) {
				t.Fatalf("RemoveDomain got %q, want %q", f.removed, tc.removed)
			}
		})
	}
}

// TestCertificateHostChecked: the {host} of /acme/certificates/{host} is
// checked and normalised as POST /acme's: an encoded space, NUL,
// backslash or slash, a port, a wildcard but *.<domain>, a name over 253 octets or a
// label over 63 is 400 and never reaches the app (no Delete, no
// Certificate), and the error does not repeat a long name.
func TestCertificateHostChecked(t *testing.T) {
	long := strings.Repeat("a", 5000)
	for _, tc := range []struct {
		target string
		want   string
	}{
		{"/acme/certificates/demo.test%20", "single domain"},
		{"/acme/certificates/demo.test%00", "invalid host"},
		{"/acme/certificates/demo.test%5C", "invalid host"},
		{"/acme/certificates/demo%2Ftest", "single domain"},
		{"/acme/certificates/%20demo.test", "single domain"},
		{"/acme/certificates/demo.test:443", "port is not allowed"},
		{"/acme/certificates/a.%2A.demo.test", "wildcard"},
		{"/acme/certificates/%2A%2A.demo.test", "wildcard"},
		{"/acme/certificates/demo.test..", "invalid host"},
		{"/acme/certificates/" + long, "longer than 253 octets"},
		{"/acme/certificates/" + strings.Repeat("a", 64) + ".test", "longer than 63 octets"},
		{"/acme/certificates/" + strings.Repeat("abcdefghi.", 26) + "test", "longer than 253 octets"},
	} {
		for _, method := range []string{"GET", "DELETE"} {
			t.Run(method+" "+tc.target[:min(len(tc.target), 60)], func(t *testing.T) {
				f := newFake()
				f.certs["demo.test"] = CertInfo{Host: "demo.test", Valid: true}
				a := &adminAPI{find: func() (App, error) { return f, nil }}
				rec := serve(t, a, httptest.NewRequest(method, tc.target, nil))
				if rec.Code != 400 || !strings.Contains(rec.Body.String(), tc.want) {
					t.Fatalf("status %d body %.300s, want 400 with %q", rec.Code, rec.Body, tc.want)
				}
				if strings.Contains(rec.Body.String(), strings.Repeat("a", 300)) {
					t.Fatalf("the error repeats the long host: %.300s", rec.Body)
				}
				if len(f.deleted) != 0 || len(f.certs) != 5 {
					t.Fatalf("an invalid host reached the app: deleted %v", f.deleted)
				}
			})
		}
	}
	// normalised as POST /acme: case and one trailing dot
	f := newFake()
	a := &adminAPI{find: func() (App, error) { return f, nil }}
	if rec := serve(t, a, httptest.NewRequest("GET", "/acme/certificates/A.Example.COM.", nil)); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"host":"a.example.com"`) {
		t.Fatalf("GET A.Example.COM.: %d %s", rec.Code, rec.Body)
	}
	if rec := serve(t, a, httptest.NewRequest("DELETE", "/acme/certificates/B.EXAMPLE.com.", nil)); rec.Code != 200 || !strings.Contains(rec.Body.String(), "certificate for host b.example.com is deleted") {
		t.Fatalf("DELETE B.EXAMPLE.com.: %d %s", rec.Code, rec.Body)
	}
	if _, ok := f.deleted["b.example.com"]; !ok || len(f.deleted) != 1 {
		t.Fatalf("deleted %v, want b.example.com", f.deleted)
	}
	// a multi-segment path is still no such resource
	if rec := serve(t, a, httptest.NewRequest("GET", "/acme/certificates/a/b", nil)); rec.Code != 404 {
		t.Fatalf("GET a/b: %d %s", rec.Code, rec.Body)
	}
	// the app's own refusal of a name is 400 too
	f.certErrs = map[string]error{"c.example.com": fmt.Errorf("%w: not a single host name", ErrBadHost)}
	if rec := serve(t, a, httptest.NewRequest("GET", "/acme/certificates/c.example.com", nil)); rec.Code != 400 {
		t.Fatalf("GET refused by the app: %d %s", rec.Code, rec.Body)
	}
}

// TestBooleanQuery: every boolean query parameter takes true/false, 1/0,
// yes/no, on/off (any case; empty is false) and answers 400 for any other
// value or for two values that disagree, instead of guessing.
func TestBooleanQuery(t *testing.T) {
	for _, tc := range []struct {
		target string
		status int
		revoke bool // for a DELETE that succeeds
		want   string
	}{
		{"/acme/certificates/b.example.com?revoke=true", 200, true, "is deleted"},
		{"/acme/certificates/b.example.com?revoke=yes", 200, true, "is deleted"},
		{"/acme/certificates/b.example.com?revoke=ON", 200, true, "is deleted"},
		{"/acme/certificates/b.example.com?revoke=1", 200, true, "is deleted"},
		{"/acme/certificates/b.example.com?revoke=false", 200, false, "is deleted"},
		{"/acme/certificates/b.example.com?revoke=no", 200, false, "is deleted"},
		{"/acme/certificates/b.example.com?revoke=", 200, false, "is deleted"},
		{"/acme/certificates/b.example.com", 200, false, "is deleted"},
		{"/acme/certificates/b.example.com?revoke=garbage", 400, false, `"error":"revoke: expected a boolean`},
		{"/acme/certificates/b.example.com?revoke=yess", 400, false, `revoke: expected a boolean`},
		{"/acme/certificates/b.example.com?revoke=true&revoke=false", 400, false, `revoke: conflicting values`},
		{"/acme/certificates/b.example.com?revoke=" + strings.Repeat("x", 500), 400, false, `revoke: expected a boolean`},
	} {
		t.Run(tc.target, func(t *testing.T) {
			f := newFake()
			a := &adminAPI{find: func() (App, error) { return f, nil }}
			rec := serve(t, a, httptest.NewRequest("DELETE", tc.target, nil))
			if rec.Code != tc.status || !strings.Contains(rec.Body.String(), tc.want) {
				t.Fatalf("status %d body %s, want %d with %q", rec.Code, rec.Body, tc.status, tc.want)
			}
			if strings.Contains(rec.Body.String(), strings.Repeat("x", 100)) {
				t.Fatalf("the error repeats the long value: %s", rec.Body)
			}
			revoke, deleted := f.deleted["b.example.com"]
			if deleted != (tc.status == 200) || revoke != tc.revoke {
				t.Fatalf("deleted %v, want deleted=%v revoke=%v", f.deleted, tc.status == 200, tc.revoke)
			}
		})
	}
	for _, q := range []string{"invalid_only=garbage", "invalid_only=2", "invalid_only=true&invalid_only=0"} {
		f := newFake()
		a := &adminAPI{find: func() (App, error) { return f, nil }}
		rec := serve(t, a, httptest.NewRequest("GET", "/acme/certificates?"+q, nil))
		if rec.Code != 400 || !strings.Contains(rec.Body.String(), `"error":"invalid_only: `) {
			t.Fatalf("GET ?%s: %d %s, want 400", q, rec.Code, rec.Body)
		}
		if len(f.batches) != 0 {
			t.Fatalf("GET ?%s read certificates", q)
		}
	}
	for _, q := range []string{"invalid_only=off", "invalid_only=False", "invalid_only="} {
		f := newFake()
		a := &adminAPI{find: func() (App, error) { return f, nil }}
		if l := getList(t, a, "/acme/certificates?"+q); len(l.Data) != 4 {
			t.Fatalf("GET ?%s: %d certificates, want all 4", q, len(l.Data))
		}
	}
	// the POST body's flag reads the same words
	f := newFake()
	a := &adminAPI{find: func() (App, error) { return f, nil }}
	rec := serve(t, a, httptest.NewRequest("POST", "/acme", strings.NewReader(`{"host":"a.example.com","test_http_challenge_flow":"yes"}`)))
	if rec.Code != 200 || len(f.orders) != 0 {
		t.Fatalf("POST test_http_challenge_flow=yes: %d %s, orders %v", rec.Code, rec.Body, f.orders)
	}
}

// TestListUnreadableItem: one certificate that cannot be read is an item
// carrying its error (without the storage's file path); the others are
// listed as they are, and invalid_only lists it (it is not valid).
func TestListUnreadableItem(t *testing.T) {
	f := newFake()
	f.certErrs = map[string]error{"b.example.com": fmt.Errorf("loading: %w", &fs.PathError{Op: "open", Path: "/var/lib/caddy/certificates/b.example.com/b.example.com.crt", Err: errors.New("input/output error")})}
	a := &adminAPI{find: func() (App, error) { return f, nil }}
	rec := serve(t, a, httptest.NewRequest("GET", "/acme/certificates", nil))
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "/var/lib/caddy") {
		t.Fatalf("the storage path is shown: %s", rec.Body)
	}
	var l certList
	if err := json.Unmarshal(rec.Body.Bytes(), &l); err != nil {
		t.Fatal(err)
	}
	if len(l.Data) != 4 {
		t.Fatalf("%d items, want 4: %s", len(l.Data), rec.Body)
	}
	for _, c := range l.Data {
		if c.Host == "b.example.com" {
			if c.Error != "loading: open (storage path): input/output error" || c.Valid || !c.NotAfter.IsZero() {
				t.Fatalf("unreadable item %+v", c)
			}
			continue
		}
		if c.Error != "" || c.SerialNumber != f.certs[c.Host].SerialNumber || c.Valid != f.certs[c.Host].Valid {
			t.Fatalf("item %+v changed", c)
		}
	}
	// the item shows its error and no zero times; valid items keep their fields
	var raw struct {
		Data []map[string]any `json:"data"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw.Data[1]["not_after"]; ok {
		t.Fatalf("the unreadable item has times: %v", raw.Data[1])
	}
	if _, ok := raw.Data[0]["error"]; ok || raw.Data[0]["not_after"] == nil {
		t.Fatalf("a readable item: %v", raw.Data[0])
	}
	l = getList(t, a, "/acme/certificates?invalid_only=true")
	if len(l.Data) != 2 || l.Data[0].Host != "b.example.com" || l.Data[1].Host != "expired.example.com" {
		t.Fatalf("invalid_only: %+v", l.Data)
	}
	// one certificate: 500, without the path
	rec = serve(t, a, httptest.NewRequest("GET", "/acme/certificates/b.example.com", nil))
	if rec.Code != 500 || strings.Contains(rec.Body.String(), "/var/lib") || !strings.Contains(rec.Body.String(), "open (storage path): input/output error") {
		t.Fatalf("GET one unreadable: %d %s", rec.Code, rec.Body)
	}
}
