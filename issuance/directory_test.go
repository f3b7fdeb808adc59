package issuance

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/certmagic"
)

// roundTripFunc is an http.RoundTripper answering with a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// TestCATransportDirectory: a GET of the issuer's directory answered
// without an ACME directory fails with an error naming the URL to give as
// api_uri, noted in an order's verdict; every other answer passes as it
// came.
func TestCATransportDirectory(t *testing.T) {
	const dir = "https://127.0.0.1:8443/directory"
	const directory = `{"newNonce":"https://127.0.0.1:8443/acme/local/new-nonce","newAccount":"https://127.0.0.1:8443/acme/local/new-account","newOrder":"https://127.0.0.1:8443/acme/local/new-order","revokeCert":"x","keyChange":"y"}`
	const hint = "; give the directory URL, e.g. https://127.0.0.1:8443/acme/<name>/directory"
	for _, tc := range []struct {
		name        string
		method, url string
		status      int
		contentType string
		body        string
		want        string // "" : passed on
	}{
		{"empty 200 (Caddy's acme_server)", "GET", dir, 200, "", "", "(HTTP 200 with an empty body)"},
		{"HTML", "GET", dir, 200, "text/html; charset=utf-8", "<html>hi</html>", `(HTTP 200 with Content-Type "text/html; charset=utf-8")`},
		{"JSON not a directory", "GET", dir, 200, "application/json", `{"status":"ok"}`, "(HTTP 200 with JSON that is not an ACME directory (newNonce, newAccount, newOrder))"},
		{"404", "GET", dir, 404, "text/plain", "404 page not found", "(HTTP 404)"},
		{"a directory", "GET", dir, 200, "application/json", directory, ""},
		{"a 5xx is the CA's outage", "GET", dir, 503, "text/html", "<html>down</html>", ""},
		{"another URL", "GET", "https://127.0.0.1:8443/renewal-info/abc", 200, "", "", ""},
		{"not a GET", "HEAD", dir, 200, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &caTransport{directories: []string{dir}, ca: "test-ca", next: roundTripFunc(func(*http.Request) (*http.Response, error) {
				h := http.Header{}
				if tc.contentType != "" {
					h.Set("Content-Type", tc.contentType)
				}
				return &http.Response{StatusCode: tc.status, Header: h, Body: io.NopCloser(strings.NewReader(tc.body))}, nil
			})}
			o := &orderVerdict{name: "www.example.org"}
			v := o.at("test-ca")
			req, err := http.NewRequestWithContext(context.WithValue(t.Context(), verdictKey{}, o), tc.method, tc.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := tr.RoundTrip(req)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("RoundTrip: %v, want the answer passed on", err)
				}
				body, _ := io.ReadAll(resp.Body)
				if string(body) != tc.body || resp.StatusCode != tc.status {
					t.Fatalf("answer passed on as HTTP %d %q, want HTTP %d %q", resp.StatusCode, body, tc.status, tc.body)
				}
				if tc.status < 500 && v.unreachable != nil {
					t.Fatalf("verdict unreachable %v", v.unreachable)
				}
				return
			}
			want := "api_uri: the CA did not answer with an ACME directory at " + dir + " " + tc.want + hint
			if err == nil || err.Error() != want || resp != nil {
				t.Fatalf("RoundTrip = %v, %v\nwant the error %q", resp, err, want)
			}
			if v.unreachable == nil || v.unreachable.Error() != want || v.refused != "" {
				t.Fatalf("verdict unreachable %v, refused %q; want the error as unreachable, not a refusal", v.unreachable, v.refused)
			}
		})
	}

	// a request that is no order's gets the error too
	tr := &caTransport{directories: []string{dir}, next: roundTripFunc(func(*http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody}, nil
	})}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "did not answer with an ACME directory") {
		t.Fatalf("RoundTrip outside an order = %v, want the directory error", err)
	}
}

// TestObserveCADirectories: ObserveCA checks the answers of the issuer's
// CA and TestCA directories.
func TestObserveCADirectories(t *testing.T) {
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return nil, errors.New("unused") },
	})
	t.Cleanup(cache.Stop)
	magic := certmagic.New(cache, certmagic.Config{Storage: &certmagic.FileStorage{Path: t.TempDir()}})
	iss := certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{CA: "https://ca.example/dir", TestCA: "https://ca.example/staging/dir", Agreed: true})
	if err := ObserveCA(iss, 0); err != nil {
		t.Fatal(err)
	}
	hc, err := issuerHTTPClient(iss)
	if err != nil {
		t.Fatal(err)
	}
	got := hc.Transport.(*caTransport).directories
	if len(got) != 2 || got[0] != iss.CA || got[1] != iss.TestCA {
		t.Fatalf("directories %v, want [%s %s]", got, iss.CA, iss.TestCA)
	}
}
