package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/acmekit/caddy-acme/internal/allowlist"
)

// recordingApp is fakeApp that also records the hosts given to
// SanityCheck.
type recordingApp struct {
	*fakeApp
	sanity  []string
	one     []string // hosts given to Certificate
	deletes []string // hosts given to Delete
}

func (r *recordingApp) SanityCheck(ctx context.Context, host string) error {
	r.sanity = append(r.sanity, host)
	return r.fakeApp.SanityCheck(ctx, host)
}

func (r *recordingApp) Certificate(ctx context.Context, host string) (CertInfo, error) {
	r.one = append(r.one, host)
	return r.fakeApp.Certificate(ctx, host)
}

func (r *recordingApp) Delete(ctx context.Context, host string, revoke bool) error {
	r.deletes = append(r.deletes, host)
	return r.fakeApp.Delete(ctx, host, revoke)
}

// storagePath is the file path in the errors of the fake's unreadable
// certificate: never in a response.
const storagePath = "/srv/secret-storage/certificates/c.example.com/c.example.com.crt"

// boolWord reports whether s is a value a boolean query parameter takes.
func boolWord(s string) bool {
	_, err := parseBool(s)
	return s == "" || err == nil
}

// statuses are the status codes the admin API documents.
var statuses = map[int]bool{200: true, 201: true, 202: true, 400: true, 404: true, 405: true, 409: true, 413: true, 415: true, 500: true}

// singleName reports whether host is one valid host name or IPv4 address,
// or a wildcard subject *.<domain>, in the form the handler passes on:
// what the allowlist takes as an exact entry (after the "*."), in lower
// case without a trailing dot.
func singleName(host string) bool {
	name := strings.TrimPrefix(host, "*.")
	return allowlist.Validate(name) == nil && !strings.Contains(name, "*") &&
		host == strings.ToLower(host) && !strings.HasSuffix(host, ".")
}

// token reports whether s is an HTTP method token, as a server delivers.
func token(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// FuzzHandler drives the admin routes as Caddy's admin server does (a
// ServeMux over Routes, errors written as {"error": …}) with any method,
// path, query, content type and body, against a fake acme app whose
// answers the input also picks. Every response has a documented status, a
// JSON Content-Type and one valid JSON document as its body; handler
// errors are caddy.APIError; a 405 says what is allowed; a POST /acme body
// over 64 KiB is 413; nothing reaches Order or SanityCheck but a single
// valid host name, and nothing reaches AddDomains but a non-empty list of
// valid entries. The {host} of /acme/certificates/{host} reaches
// Certificate or Delete only as a single valid host name (never an encoded
// space, NUL, backslash or slash, nor an overlong name); a boolean query
// parameter that is not a boolean is 400 and deletes nothing; no response
// shows a storage path. A path with %-escapes is delivered as a server
// does (Path decoded, RawPath as sent).
func FuzzHandler(f *testing.F) {
	for _, s := range []struct {
		method, path, query, ct, body string
	}{
		{"PATCH", "/acme", "", "", ""},
		{"POST", "/acme", "", "application/json", `{"host":"new.example.com"}`},
		{"POST", "/acme/", "", "application/json; charset=utf-8", `{"host":"a.example.com","test_http_challenge_flow":true}`},
		{"POST", "/acme", "", "application/x-www-form-urlencoded", "host=New.Example.com.&test_http_challenge_flow=1"},
		{"POST", "/acme", "", "multipart/form-data; boundary=x", "--x--"},
		{"POST", "/acme", "", "application/json", `{"host":"a_b.example"}`},
		{"POST", "/acme", "", "application/json", `{"host":"a\u0000b"}`},
		{"POST", "/acme", "", "application/json", `{"host":"..."}`},
		{"POST", "/acme", "", "application/json", `{"host":"x@evil.example"}`},
		{"POST", "/acme", "", "application/json", `{"host":"bücher.example"}`},
		{"POST", "/acme", "", "application/json", `{"host":"192.0.2.1","test_http_challenge_flow":"maybe"}`},
		{"POST", "/acme", "", "text/plain", `{"host":["a"]}`},
		{"POST", "/acme", "", "application/x-www-form-urlencoded", "host=%zz"},
		{"GET", "/acme", "", "", ""},
		{"GET", "/acme/certificates", "invalid_only=1&limit=2&after=b.example.com", "", ""},
		{"GET", "/acme/certificates/", "limit=99999", "", ""},
		{"GET", "/acme/certificates/A.example.com.", "", "", ""},
		{"DELETE", "/acme/certificates/b.example.com", "revoke=true", "", ""},
		{"DELETE", "/acme/certificates/a/b", "", "", ""},
		{"PUT", "/acme", "", "", ""},
		{"GET", "/acme/nope", "", "", ""},
		{"GET", "/acme/certificates/%2F", "", "", ""},
		{"GET", "/acme/domains", "", "", ""},
		{"POST", "/acme/domains", "", "application/json", `{"domains":["new.example.com","*.t.example","example.*"]}`},
		{"POST", "/acme/domains/", "", "", `{"domains":["Bücher.Example.","a.*.b"]}`},
		{"POST", "/acme/domains", "", "application/json", `{"domains":[]}`},
		{"DELETE", "/acme/domains/%2A.tenant.example.net", "", "", ""},
		{"DELETE", "/acme/domains/absent.example", "", "", ""},
		{"PATCH", "/acme/domains/x", "", "", ""},
		{"DELETE", "/acme/certificates/demo.test%20", "", "", ""},
		{"DELETE", "/acme/certificates/demo.test%00", "revoke=true", "", ""},
		{"GET", "/acme/certificates/demo.test%5C", "", "", ""},
		{"DELETE", "/acme/certificates/a.example.com%2F..%2Fb.example.com", "", "", ""},
		{"GET", "/acme/certificates/%2Fetc%2Fpasswd", "", "", ""},
		{"GET", "/acme/certificates/" + strings.Repeat("a", 5000), "", "", ""},
		{"DELETE", "/acme/certificates/" + strings.Repeat("b", 64) + ".example.com", "", "", ""},
		{"DELETE", "/acme/certificates/" + strings.Repeat("abcdefgh.", 30) + "com", "", "", ""},
		{"DELETE", "/acme/certificates/b.example.com", "revoke=garbage", "", ""},
		{"DELETE", "/acme/certificates/B.Example.com.", "revoke=yes&revoke=no", "", ""},
		{"DELETE", "/acme/certificates/a.example.com", "revoke=on", "", ""},
		{"GET", "/acme/certificates", "invalid_only=garbage", "", ""},
		{"GET", "/acme/certificates", "invalid_only=yes&limit=1", "", ""},
		{"GET", "/acme/certificates", "invalid_only=%00", "", ""},
		{"GET", "/acme/certificates/c.example.com", "", "", ""},
		{"POST", "/acme", "", "application/json", `{"host":"127.0.0.2","test_http_challenge_flow":"on"}`},
	} {
		for mode := range uint8(4) {
			f.Add(s.method, s.path, s.query, s.ct, []byte(s.body), mode == 3, mode*37)
		}
	}
	f.Fuzz(func(t *testing.T, method, path, query, contentType string, body []byte, big bool, mode uint8) {
		if !token(method) {
			return
		}
		if big {
			body = append(body, bytes.Repeat([]byte(" "), maxBody+1)...)
		}
		fake := newFake()
		fake.orderErr = []error{nil, ErrBadHost, ErrNotAllowed, ErrConflict, errors.New("rateLimited")}[mode%5]
		if mode&8 != 0 {
			fake.sanityErr = errors.New("timeout")
		}
		fake.status = []json.RawMessage{nil, json.RawMessage(`{"checked":4}`), json.RawMessage(`{`)}[mode/16%3]
		if mode&2 != 0 {
			fake.certErrs = map[string]error{"c.example.com": fmt.Errorf("loading: %w", &fs.PathError{Op: "open", Path: storagePath, Err: errors.New("input/output error")})}
		}
		if mode&4 != 0 {
			fake.domainErr = []error{ErrTooManyDomains, ErrDomainNotFound, ErrInvalidDomain, errors.New("unreadable")}[mode/4%4]
		}
		m := &recordingApp{fakeApp: fake}
		a := &adminAPI{find: func() (App, error) { return m, nil }}
		if mode >= 240 {
			a.find = func() (App, error) { return nil, errors.New("no acme app") }
		}

		mux := http.NewServeMux()
		reached := false
		for _, route := range a.Routes() {
			h := route.Handler
			mux.Handle(route.Pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reached = true
				err := h.ServeHTTP(w, r)
				if err == nil {
					return
				}
				var apiErr caddy.APIError
				if !errors.As(err, &apiErr) {
					t.Fatalf("%s %s: handler returned %T %v, not a caddy.APIError", r.Method, r.URL, err, err)
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(apiErr.HTTPStatus)
				json.NewEncoder(w).Encode(map[string]string{"error": apiErr.Err.Error()}) //nolint:errcheck
			}))
		}
		req := httptest.NewRequest(http.MethodGet, "/", bytes.NewReader(body))
		req.Method = method
		req.URL = &url.URL{Path: path, RawQuery: query}
		if dec, err := url.PathUnescape(path); err == nil && dec != path {
			req.URL.Path, req.URL.RawPath = dec, path
		}
		req.RequestURI = req.URL.RequestURI()
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		if !reached {
			return // not routed to this module (another path, or a redirect to the clean one)
		}

		what := method + " " + req.URL.String()
		if !statuses[rec.Code] {
			t.Fatalf("%s: status %d, not a documented one; body %s", what, rec.Code, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s: Content-Type %q", what, ct)
		}
		dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
		var v any
		if err := dec.Decode(&v); err != nil || dec.More() {
			t.Fatalf("%s: body is not one JSON document: %q", what, rec.Body)
		}
		if rec.Code == 405 && rec.Header().Get("Allow") == "" {
			t.Fatalf("%s: 405 without Allow", what)
		}
		if mode < 240 && method == http.MethodPost && (path == "/acme" || path == "/acme/") && len(body) > maxBody && rec.Code != 413 {
			t.Fatalf("%s: a body of %d bytes is %d, want 413", what, len(body), rec.Code)
		}
		if strings.Contains(rec.Body.String(), storagePath) || strings.Contains(rec.Body.String(), "/srv/secret-storage") {
			t.Fatalf("%s: the response shows the storage path: %s", what, rec.Body)
		}
		q, _ := url.ParseQuery(query)
		notBool := func(name string) bool {
			for _, v := range q[name] {
				if !boolWord(v) {
					return true
				}
			}
			return false
		}
		if method == http.MethodDelete && notBool("revoke") && (rec.Code == 200 || len(m.deletes) != 0) {
			t.Fatalf("%s: a non-boolean revoke answered %d, deleted %v; body %s", what, rec.Code, m.deletes, rec.Body)
		}
		if mode < 240 && method == http.MethodGet && (req.URL.Path == "/acme/certificates" || req.URL.Path == "/acme/certificates/") &&
			notBool("invalid_only") && rec.Code != 400 {
			t.Fatalf("%s: a non-boolean invalid_only answered %d, want 400; body %s", what, rec.Code, rec.Body)
		}
		for _, host := range append(append(append(fake.orders, m.sanity...), m.one...), m.deletes...) {
			if !singleName(host) {
				t.Fatalf("%s with body %q: the host %q reached the app", what, body, host)
			}
		}
		for _, entries := range fake.added {
			if len(entries) == 0 {
				t.Fatalf("%s with body %q: an empty list reached AddDomains", what, body)
			}
			for _, e := range entries {
				if allowlist.Validate(e) != nil {
					t.Fatalf("%s with body %q: the invalid entry %q reached AddDomains", what, body, e)
				}
			}
		}
	})
}
