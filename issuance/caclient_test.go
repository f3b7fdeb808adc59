package issuance

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// The tests of the CA transport (caclient.go): that it reaches the HTTP
// client certmagic's ACME issuer talks to the CA with; how it reads the
// CA's answers (recorded as RFC 8555, Pebble, Let's Encrypt and smallstep's
// acme_server write them: parsing, not a CA); and what the runtime does
// with the verdict against a real Pebble: a backoff for the CA's refusal of
// a name, a node-wide pause when the CA cannot be reached.

// TestObserveCAReachesCertmagicsClient pins the reflection on certmagic's
// unexported ACMEIssuer.httpClient: ObserveCA wraps the transport of the
// client certmagic made (this fails if certmagic renames or retypes the
// field), only once, and the CA's answers to an order then pass through
// it (an order from nowhere is noted as an unreachable CA).
func TestObserveCAReachesCertmagicsClient(t *testing.T) {
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return nil, errors.New("unused") },
	})
	t.Cleanup(cache.Stop)
	magic := certmagic.New(cache, certmagic.Config{Storage: &certmagic.FileStorage{Path: t.TempDir()}})
	iss := certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{CA: noCA.dir, TestCA: noCA.dir, Agreed: true})

	hc, err := issuerHTTPClient(iss)
	if err != nil {
		t.Fatalf("certmagic's ACMEIssuer no longer has the HTTP client ObserveCA wraps: %v", err)
	}
	certmagics := hc.Transport
	if _, ok := certmagics.(*http.Transport); !ok {
		t.Fatalf("certmagic's client has a %T transport, want its *http.Transport", certmagics)
	}
	if err := ObserveCA(iss, time.Minute); err != nil {
		t.Fatal(err)
	}
	ct, ok := hc.Transport.(*caTransport)
	if !ok {
		t.Fatalf("after ObserveCA the issuer's transport is %T, want *caTransport", hc.Transport)
	}
	if ct.next != certmagics || ct.validation != time.Minute {
		t.Fatalf("caTransport wraps %T with validation %s, want certmagic's transport and 1m", ct.next, ct.validation)
	}
	if again, err := issuerHTTPClient(iss); err != nil || again != hc {
		t.Fatalf("issuerHTTPClient returned another client the second time: %p %p, %v", again, hc, err)
	}
	if err := ObserveCA(iss, time.Hour); err != nil {
		t.Fatal(err)
	}
	if ct2 := hc.Transport.(*caTransport); ct2 != ct || ct2.validation != time.Minute {
		t.Fatal("a second ObserveCA wrapped the transport again")
	}

	// an issuer certmagic did not make has no client: an error, not a panic
	if err := ObserveCA(&certmagic.ACMEIssuer{CA: noCA.dir}, time.Minute); err == nil {
		t.Fatal("ObserveCA of an issuer without an HTTP client succeeded")
	}

	// New installs it, and acmez's requests go through it: an order from a
	// directory where nothing listens is seen as an unreachable CA
	r := buildRuntime(t, noCA, nil, Options{})
	hc, err = issuerHTTPClient(r.issuer.(*certmagic.ACMEIssuer))
	if err != nil {
		t.Fatal(err)
	}
	if ct, ok := hc.Transport.(*caTransport); !ok || ct.validation != r.opts.IssueTimeout/2 {
		t.Fatalf("the runtime's issuer has a %T transport, want *caTransport bounding validation at issue_timeout/2", hc.Transport)
	}
	v, err := watch(t.Context(), "nowhere.example.com", func(ctx context.Context) error {
		return r.magic.ObtainCertSync(ctx, "nowhere.example.com")
	})
	if err == nil {
		t.Fatal("an order from nowhere succeeded")
	}
	if last := v.last(); last.unreachable == nil || last.refused || last.ca != r.caKey() {
		t.Fatalf("verdict on an order from nowhere: %+v; want the CA unreachable, not refused (the transport saw nothing?)", v)
	}
}

// Recorded answers of CAs to authorization polls.
const (
	// smallstep's acme_server (Caddy's, step-ca) after a failed HTTP-01
	// validation: the authorization and the challenge stay "pending", the
	// challenge carries the error (acme/challenge.go storeError with
	// markInvalid false; smallstep/certificates#1365).
	smallstepPendingWithError = `{
  "identifier": {"type": "dns", "value": "fail.example.com"},
  "status": "pending",
  "challenges": [
    {
      "type": "http-01",
      "status": "pending",
      "token": "JmYHr3K1xvLrb8LQtT4OiztYmDYoL9Gf",
      "url": "https://127.0.0.1:8443/acme/local/challenge/bRxA5CFtDg2AuoEz5AmDvEJgbPD4HGyB/zKkuB5CqQGpKp8vPFgDL4JIzXQ4GJ5Lp",
      "error": {"type": "urn:ietf:params:acme:error:connection", "detail": "The server could not connect to validation target"}
    }
  ],
  "wildcard": false,
  "expires": "2030-01-02T15:04:05Z"
}`
	// RFC 8555 §7.1.4: a pending authorization, validation not done yet.
	rfcPending = `{
  "status": "pending",
  "expires": "2030-01-02T14:09:07.99Z",
  "identifier": {"type": "dns", "value": "www.example.org"},
  "challenges": [
    {"url": "https://example.com/acme/chall/prV_B7yEyA4", "type": "http-01", "status": "pending", "token": "DGyRejmCefe7v4NfDGDKfA"},
    {"url": "https://example.com/acme/chall/Rg5dV14Gh1Q", "type": "dns-01", "status": "pending", "token": "DGyRejmCefe7v4NfDGDKfA"}
  ]
}`
	// RFC 8555 §7.1.4 (Pebble alike): validated.
	rfcValid = `{
  "status": "valid",
  "expires": "2030-01-02T14:09:07.99Z",
  "identifier": {"type": "dns", "value": "www.example.org"},
  "challenges": [
    {"url": "https://example.com/acme/chall/prV_B7yEyA4", "type": "http-01", "status": "valid", "token": "DGyRejmCefe7v4NfDGDKfA", "validated": "2030-01-01T14:09:07.99Z"}
  ]
}`
	// Pebble after a failed HTTP-01 validation: both invalid, with the
	// challenge's error.
	pebbleInvalid = `{
  "status": "invalid",
  "identifier": {"type": "dns", "value": "fail.example.com"},
  "challenges": [
    {
      "type": "http-01",
      "url": "https://127.0.0.1:14000/chalZ/tzNTmy3Nc0WvFT8bx6IhcwXbLgkMNbPK9ibS2Q8VQeU",
      "token": "v6MLrFcFOlUGdbVt_MVMaqsjOD8qdhW3ZmpPm7fA_hk",
      "status": "invalid",
      "validated": "2030-01-01T10:00:00Z",
      "error": {"type": "urn:ietf:params:acme:error:connection", "detail": "127.0.0.1: Fetching http://fail.example.com:5002/.well-known/acme-challenge/v6MLrFcFOlUGdbVt_MVMaqsjOD8qdhW3ZmpPm7fA_hk: Connection refused", "status": 400}
    }
  ],
  "expires": "2030-01-02T10:00:00Z"
}`
)

// authzJSON is what the tests read back of a body the transport rewrote.
type authzJSON struct {
	Status     string `json:"status"`
	Challenges []struct {
		Type   string        `json:"type"`
		Status string        `json:"status"`
		Error  *acme.Problem `json:"error"`
	} `json:"challenges"`
}

func decodeAuthz(t *testing.T, body []byte) authzJSON {
	t.Helper()
	var a authzJSON
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("rewritten authorization %q: %v", body, err)
	}
	return a
}

// authzResponse is the response of an authorization poll, as the
// transport gets it.
func authzResponse() *http.Response {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	return &http.Response{StatusCode: http.StatusOK, Header: h}
}

// TestCATransportAuthorization: how the transport reads an authorization.
func TestCATransportAuthorization(t *testing.T) {
	tr := &caTransport{validation: time.Minute}

	t.Run("pending with a challenge error ends the order", func(t *testing.T) {
		v := &verdict{ca: "test-ca"}
		resp := authzResponse()
		out := tr.authorization(v, resp, []byte(smallstepPendingWithError))
		if out == nil {
			t.Fatal("a pending authorization whose challenge failed was passed on as pending")
		}
		a := decodeAuthz(t, out)
		if a.Status != acme.StatusInvalid || len(a.Challenges) != 1 || a.Challenges[0].Status != acme.StatusInvalid {
			t.Fatalf("rewritten authorization %s: want it and its challenge invalid", out)
		}
		if e := a.Challenges[0].Error; e == nil || e.Type != "urn:ietf:params:acme:error:connection" || e.Detail != "The server could not connect to validation target" {
			t.Fatalf("the challenge's error became %+v, want the CA's kept", e)
		}
		// everything else of the CA's answer is kept
		var orig, got map[string]any
		_ = json.Unmarshal([]byte(smallstepPendingWithError), &orig)
		_ = json.Unmarshal(out, &got)
		if got["expires"] != orig["expires"] || got["wildcard"] != orig["wildcard"] {
			t.Fatalf("rewritten authorization lost fields: %s", out)
		}
		if !strings.Contains(v.refused, "fail.example.com") || !strings.Contains(v.refused, "The server could not connect to validation target") ||
			!strings.Contains(v.refused, "urn:ietf:params:acme:error:connection") {
			t.Fatalf("verdict refused %q, want the CA's error for the name", v.refused)
		}
		if resp.Header.Get("Retry-After") != "" {
			t.Fatal("a Retry-After was added to an authorization that ends the order")
		}
	})

	t.Run("pending polls back off", func(t *testing.T) {
		v := &verdict{ca: "test-ca"}
		var got []int
		for range 12 {
			resp := authzResponse()
			if out := tr.authorization(v, resp, []byte(rfcPending)); out != nil {
				t.Fatalf("a pending authorization without an error was rewritten: %s", out)
			}
			h := resp.Header.Get("Retry-After")
			if h == "" {
				got = append(got, 0) // acmez's own interval, 250 ms
				continue
			}
			n, err := strconv.Atoi(h)
			if err != nil || n <= 0 {
				t.Fatalf("poll %d: Retry-After %q", len(got), h)
			}
			got = append(got, n)
		}
		// the answer read before solving and the polls of the first second
		// (acmez asks every 250 ms) go unchanged, then the polls back off
		if want := []int{0, 0, 0, 0, 1, 1, 2, 2, 4, 4, 8, 8}; !slices.Equal(got, want) {
			t.Fatalf("Retry-After of successive polls = %v, want %v", got, want)
		}
		if v.refused != "" {
			t.Fatalf("pending polls refused the name: %q", v.refused)
		}

		// the CA's own Retry-After is kept
		resp := authzResponse()
		resp.Header.Set("Retry-After", "30")
		tr.authorization(v, resp, []byte(rfcPending))
		if h := resp.Header.Get("Retry-After"); h != "30" {
			t.Fatalf("the CA's Retry-After 30 became %q", h)
		}
	})

	t.Run("pending past the validation bound ends the order", func(t *testing.T) {
		v := &verdict{ca: "test-ca", polls: 5, firstPending: time.Now().Add(-2 * time.Minute)}
		out := tr.authorization(v, authzResponse(), []byte(rfcPending))
		if out == nil {
			t.Fatal("an authorization pending past the validation bound was passed on as pending")
		}
		a := decodeAuthz(t, out)
		if a.Status != acme.StatusInvalid {
			t.Fatalf("rewritten status %q, want invalid", a.Status)
		}
		for _, c := range a.Challenges {
			if c.Status != acme.StatusInvalid || c.Error == nil || !strings.Contains(c.Error.Detail, "did not validate www.example.org within 1m0s") {
				t.Fatalf("challenge %s: status %q error %+v, want invalid with our reason", c.Type, c.Status, c.Error)
			}
		}
		if !strings.Contains(v.refused, "did not validate www.example.org within 1m0s") || !strings.Contains(v.refused, "counted as a failed validation") {
			t.Fatalf("verdict refused %q, want our reason", v.refused)
		}

		// without a bound, it is polled on
		v = &verdict{ca: "test-ca", polls: 5, firstPending: time.Now().Add(-2 * time.Hour)}
		if out := (&caTransport{}).authorization(v, authzResponse(), []byte(rfcPending)); out != nil || v.refused != "" {
			t.Fatalf("no validation bound: rewritten %s, refused %q; want it polled on", out, v.refused)
		}
	})

	t.Run("valid is untouched", func(t *testing.T) {
		v := &verdict{ca: "test-ca"}
		resp := authzResponse()
		if out := tr.authorization(v, resp, []byte(rfcValid)); out != nil {
			t.Fatalf("a valid authorization was rewritten: %s", out)
		}
		if v.refused != "" || v.polls != 0 || resp.Header.Get("Retry-After") != "" {
			t.Fatalf("a valid authorization changed the verdict (refused %q, polls %d) or the header", v.refused, v.polls)
		}
	})

	t.Run("invalid is passed on and refuses the name", func(t *testing.T) {
		v := &verdict{ca: "test-ca"}
		if out := tr.authorization(v, authzResponse(), []byte(pebbleInvalid)); out != nil {
			t.Fatalf("an invalid authorization was rewritten: %s", out)
		}
		if !strings.Contains(v.refused, "Connection refused") || !strings.Contains(v.refused, "fail.example.com") {
			t.Fatalf("verdict refused %q, want the CA's error", v.refused)
		}
	})

	t.Run("not an authorization", func(t *testing.T) {
		v := &verdict{ca: "test-ca"}
		for _, body := range []string{
			`{"status":"pending","expires":"2030-01-01T00:00:00Z","identifiers":[{"type":"dns","value":"www.example.org"}],"authorizations":["https://example.com/acme/authz/1"],"finalize":"https://example.com/acme/order/1/finalize"}`,
			`{"status":"valid","contact":["mailto:ops@example.com"],"orders":"https://example.com/acme/acct/1/orders"}`,
			`not json "challenges"`,
		} {
			resp := authzResponse()
			if out := tr.authorization(v, resp, []byte(body)); out != nil || resp.Header.Get("Retry-After") != "" {
				t.Fatalf("%s: rewritten %s, Retry-After %q; want it untouched", body, out, resp.Header.Get("Retry-After"))
			}
		}
		if v.refused != "" || v.polls != 0 {
			t.Fatalf("answers other than authorizations changed the verdict: %+v", v)
		}
	})
}

// jwsBody is a flattened JWS (RFC 8555 §6.2) with payload; signatures are
// not read.
func jwsBody(payload string) string {
	protected := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","kid":"https://127.0.0.1:14000/my-account/1","nonce":"abc","url":"https://127.0.0.1:14000/order-plz"}`))
	return `{"protected":"` + protected + `","payload":"` + base64.RawURLEncoding.EncodeToString([]byte(payload)) + `","signature":"c2ln"}`
}

// TestCATransportProblems: how the transport reads the CA's error answers.
func TestCATransportProblems(t *testing.T) {
	newOrder := jwsBody(`{"identifiers":[{"type":"dns","value":"www.example.org"}]}`)
	finalize := jwsBody(`{"csr":"MIIBPTCBxAIBADBFMQswCQYDVQQGEwJGUjEPMA0GA1UECAwGRnJhbmNl"}`)
	postAsGet := `{"protected":"eyJhbGciOiJFUzI1NiJ9","payload":"","signature":"c2ln"}`
	rateLimitedDetail := "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2030-01-01 00:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers"

	type want struct {
		refused     string // a substring of the refusal; "" none
		unreachable bool
		rateLimited bool
	}
	for _, tc := range []struct {
		name       string
		status     int
		retryAfter string
		reqBody    string // "" a request without a body
		noGetBody  bool
		problem    string
		want       want
	}{
		{
			name: "rateLimited with Retry-After", status: 429, retryAfter: "3600", reqBody: newOrder,
			problem: `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"` + rateLimitedDetail + `","status":429}`,
			want:    want{rateLimited: true},
		},
		{
			name: "accountDoesNotExist", status: 400, reqBody: jwsBody(`{"onlyReturnExisting":true}`),
			problem: `{"type":"urn:ietf:params:acme:error:accountDoesNotExist","detail":"unable to find existing account for only-return-existing request","status":400}`,
		},
		{
			name: "externalAccountRequired", status: 400, reqBody: jwsBody(`{"termsOfServiceAgreed":true}`),
			problem: `{"type":"urn:ietf:params:acme:error:externalAccountRequired","detail":"External Account Binding is required for new accounts","status":400}`,
		},
		{
			name: "rejectedIdentifier", status: 400, reqBody: newOrder,
			problem: `{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"Invalid identifiers requested :: Cannot issue for \"intranet\": Domain name needs at least one dot","status":400}`,
			want:    want{refused: "Domain name needs at least one dot"},
		},
		{
			name: "caa", status: 403, reqBody: finalize,
			problem: `{"type":"urn:ietf:params:acme:error:caa","detail":"CAA record for www.example.org prevents issuance","status":403}`,
			want:    want{refused: "CAA record for www.example.org prevents issuance"},
		},
		{
			name: "malformed on finalize", status: 400, reqBody: finalize,
			problem: `{"type":"urn:ietf:params:acme:error:malformed","detail":"Error parsing certificate request: asn1: syntax error","status":400}`,
		},
		{
			name: "malformed on a POST-as-GET", status: 400, reqBody: postAsGet,
			problem: `{"type":"urn:ietf:params:acme:error:malformed","detail":"Unable to validate JWS","status":400}`,
		},
		{
			name: "malformed on a new order", status: 400, reqBody: newOrder,
			problem: `{"type":"urn:ietf:params:acme:error:malformed","detail":"Order included DNS identifier with a value containing an illegal character: '_'","status":400}`,
			want:    want{refused: "illegal character"},
		},
		{
			name: "malformed on a new order whose body cannot be read again", status: 400, reqBody: newOrder, noGetBody: true,
			problem: `{"type":"urn:ietf:params:acme:error:malformed","detail":"Order included DNS identifier with a value containing an illegal character: '_'","status":400}`,
		},
		{
			name: "compound on a new order", status: 400, reqBody: newOrder,
			problem: `{"type":"urn:ietf:params:acme:error:compound","detail":"Cannot issue for 2 identifiers","status":400,"subproblems":[{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"blocked","identifier":{"type":"dns","value":"www.example.org"}}]}`,
			want:    want{refused: "Cannot issue for 2 identifiers"},
		},
		{
			name: "badNonce", status: 400, reqBody: newOrder,
			problem: `{"type":"urn:ietf:params:acme:error:badNonce","detail":"JWS has an invalid anti-replay nonce: \"abc\"","status":400}`,
		},
		{
			name: "503 problem", status: 503, reqBody: newOrder,
			problem: `{"type":"urn:ietf:params:acme:error:serverInternal","detail":"The service is down for maintenance or had an internal error. Check https://letsencrypt.status.io/ for more details.","status":503}`,
			want:    want{unreachable: true},
		},
		{
			name: "500 serverInternal", status: 500, reqBody: finalize,
			problem: `{"type":"urn:ietf:params:acme:error:serverInternal","detail":"Error finalizing order","status":500}`,
			want:    want{unreachable: true},
		},
		{
			name: "502 that is not a problem document", status: 502, reqBody: newOrder,
			problem: `{"message":"bad gateway"}`,
			want:    want{unreachable: true},
		},
		{
			name: "400 that is not a problem document", status: 400, reqBody: newOrder,
			problem: `{"message":"bad request"}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, "https://127.0.0.1:14000/order-plz", strings.NewReader(tc.reqBody))
			if err != nil {
				t.Fatal(err)
			}
			if tc.noGetBody {
				req.GetBody = nil
			}
			resp := &http.Response{StatusCode: tc.status, Header: http.Header{}, Request: req}
			resp.Header.Set("Content-Type", "application/problem+json")
			if tc.retryAfter != "" {
				resp.Header.Set("Retry-After", tc.retryAfter)
			}
			v := &verdict{ca: "test-ca"}
			before := time.Now()
			(&caTransport{}).noteProblem(v, req, resp, []byte(tc.problem))

			switch {
			case tc.want.refused == "" && v.refused != "":
				t.Errorf("refused %q, want no refusal", v.refused)
			case tc.want.refused != "" && !strings.Contains(v.refused, tc.want.refused):
				t.Errorf("refused %q, want a refusal with %q", v.refused, tc.want.refused)
			}
			if (v.unreachable != nil) != tc.want.unreachable {
				t.Errorf("unreachable = %v, want %v", v.unreachable, tc.want.unreachable)
			}
			if (v.rateLimited != nil) != tc.want.rateLimited {
				t.Errorf("rateLimited = %+v, want %v", v.rateLimited, tc.want.rateLimited)
			}
			if tc.want.rateLimited {
				if v.rateLimited.Detail != rateLimitedDetail || v.rateLimited.Status != 429 {
					t.Errorf("rate limit problem %+v, want the CA's", v.rateLimited)
				}
				if at := v.retryAfter; at.Before(before.Add(time.Hour)) || at.After(time.Now().Add(time.Hour)) {
					t.Errorf("retry after %s, want in an hour (Retry-After: 3600)", at)
				}
			}
		})
	}

	t.Run("Retry-After forms", func(t *testing.T) {
		at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
		if got := retryAfter(at.Format(http.TimeFormat)); !got.Equal(at) {
			t.Errorf("HTTP date: %s, want %s", got, at)
		}
		for _, h := range []string{"", "soon", "-5"} {
			if got := retryAfter(h); !got.IsZero() {
				t.Errorf("Retry-After %q: %s, want none", h, got)
			}
		}
	})
}

// failingValidation returns a CA whose HTTP-01 validation of every name
// fails: Pebble connects to a port where nothing listens, the issuer
// answers on another one.
func failingValidation(t *testing.T) testCA {
	t.Helper()
	ca := startCA(t, testenv.PebbleOptions{})
	ca.httpPort = testenv.FreePort(t)
	return ca
}

// loadBackoff returns the backoff record of name at r's CA.
func loadBackoff(t *testing.T, r *testRuntime, name string) (backoff, error) {
	t.Helper()
	data, err := r.storage.Load(t.Context(), BackoffKey(r.caKey(), name))
	if err != nil {
		return backoff{}, err
	}
	var b backoff
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatalf("backoff record %s: %v", data, err)
	}
	return b, nil
}

// TestFailedValidationBacksOff: Pebble cannot validate the name (its
// validation connects where nothing answers): the order fails with the
// CA's error, which the backoff record holds, and the next handshake
// places no order. The record is read with the fail_backoff in force: a
// runtime over the same storage with a lower one counts from failed_at
// with it, and 0 never refuses.
func TestFailedValidationBacksOff(t *testing.T) {
	ca := failingValidation(t)
	r := newTestRuntime(t, ca, nil, Options{FailBackoff: 10 * time.Minute})
	const name = "refused.example.com"

	before := time.Now()
	if _, err := r.get(t.Context(), name); err == nil {
		t.Fatal("the certificate was obtained although validation cannot succeed")
	}
	after := time.Now()
	if n := ca.pebble.OrdersFor(name); n != 1 {
		t.Fatalf("%d orders for %s, want 1", n, name)
	}
	b, err := loadBackoff(t, r, name)
	if err != nil {
		t.Fatalf("no backoff record after the CA refused the name: %v\npebble log:\n%s", err, ca.pebble.Log())
	}
	if b.Host != name || b.CA != r.caKey() {
		t.Errorf("backoff record host %q ca %q, want %q %q", b.Host, b.CA, name, r.caKey())
	}
	if b.FailedAt.Before(before.Add(-time.Second)) || b.FailedAt.After(after) {
		t.Errorf("failed_at %s, want between %s and %s", b.FailedAt, before, after)
	}
	if d := b.Until.Sub(b.FailedAt); d != 10*time.Minute {
		t.Errorf("until - failed_at = %s, want the 10m backoff", d)
	}
	// the CA's own words: Pebble's connection problem on the challenge
	if !strings.Contains(b.Error, "the CA could not validate "+name) || !strings.Contains(b.Error, "urn:ietf:params:acme:error:connection") {
		t.Errorf("backoff error %q, want the CA's challenge error", b.Error)
	}
	t.Logf("backoff record: %+v", b)

	_, err = r.get(t.Context(), name)
	if _, ok := errors.AsType[BackoffError](err); !ok {
		t.Fatalf("second get: %v, want a BackoffError", err)
	}
	if n := ca.pebble.Orders(); n != 1 {
		t.Fatalf("%d orders after the refused get, want still 1", n)
	}

	// read with the setting in force, not the record's until
	lower := buildRuntime(t, ca, r.storage, Options{FailBackoff: 2 * time.Minute})
	err = lower.checkBackoff(t.Context(), lower.cas[0], name)
	if _, ok := errors.AsType[BackoffError](err); !ok {
		t.Fatalf("fail_backoff 2m, a moment after the failure: %v, want a BackoffError", err)
	}
	secs := leftSeconds(t, err)
	if secs > 120 || secs < 60 {
		t.Fatalf("fail_backoff 2m: %q, want at most 120 seconds left (the record says 10m)", err)
	}
	lower.opts.FailBackoff = time.Millisecond // less than the time since the failure
	if err := lower.checkBackoff(t.Context(), lower.cas[0], name); err != nil {
		t.Fatalf("fail_backoff lowered below the time since the failure: %v, want no refusal", err)
	}
	off := buildRuntime(t, ca, r.storage, Options{})
	if off.opts.FailBackoff != 0 {
		t.Fatalf("FailBackoff %s, want 0", off.opts.FailBackoff)
	}
	if err := off.checkBackoff(t.Context(), off.cas[0], name); err != nil {
		t.Fatalf("fail_backoff 0: %v, want no refusal", err)
	}

	// and the order is placed again: the runtime with fail_backoff 0 orders
	off.Start()
	if _, err := off.get(t.Context(), name); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("get with fail_backoff 0: %v, want the CA's refusal again", err)
	}
	if n := ca.pebble.OrdersFor(name); n != 2 {
		t.Fatalf("%d orders for %s after fail_backoff 0, want 2", n, name)
	}
	if b2, err := loadBackoff(t, r, name); err != nil || !b2.FailedAt.Equal(b.FailedAt) {
		t.Fatalf("fail_backoff 0 wrote a backoff: %+v, %v", b2, err)
	}
}

// leftSeconds reads the seconds of Kong's backoff message.
func leftSeconds(t *testing.T, err error) int {
	t.Helper()
	msg := err.Error()
	const pre = "please try again in "
	i := strings.Index(msg, pre)
	if i < 0 {
		t.Fatalf("%q is not Kong's backoff message", msg)
	}
	rest := msg[i+len(pre):]
	n, convErr := strconv.Atoi(rest[:strings.IndexByte(rest, ' ')])
	if convErr != nil {
		t.Fatalf("%q: %v", msg, convErr)
	}
	return n
}

// TestUnreachableCAPauses: an order that cannot reach the CA writes no
// backoff (not the name's fault) and pauses the node's new orders: the
// next name is refused at once with a PauseError, without a connection.
func TestUnreachableCAPauses(t *testing.T) {
	r := newTestRuntime(t, noCA, nil, Options{FailBackoff: 10 * time.Minute})
	_, err := r.get(t.Context(), "first.example.com")
	if err == nil {
		t.Fatal("an order from nowhere succeeded")
	}
	if _, ok := errors.AsType[PauseError](err); ok {
		t.Fatalf("the first order was refused by a pause: %v", err)
	}
	if _, err := loadBackoff(t, r, "first.example.com"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backoff record after an unreachable CA: %v, want none", err)
	}
	start := time.Now()
	_, err = r.get(t.Context(), "second.example.com")
	took := time.Since(start)
	pe, ok := errors.AsType[PauseError](err)
	if !ok {
		t.Fatalf("second name while the CA is unreachable: %v, want a PauseError", err)
	}
	if !strings.Contains(string(pe), "new certificate orders are paused") || !strings.Contains(string(pe), "could not be reached") {
		t.Fatalf("pause error %q", pe)
	}
	if took > 3*time.Second { // functional bound: well inside the 5 s pause and issue_timeout
		t.Fatalf("the paused get took %s, want it refused at once", took)
	}
	if _, err := loadBackoff(t, r, "second.example.com"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backoff record after a pause: %v, want none", err)
	}
}

// TestCAOutageAndReturn: a real Pebble behind a relay that is cut and
// restored. While cut, an order fails without a backoff and the next is
// refused at once by the node's pause; restored, the node keeps away from
// the CA until the pause ends (no connection reaches it), then orders
// again and gets the certificate.
func TestCAOutageAndReturn(t *testing.T) {
	ca := startCA(t, testenv.PebbleOptions{})
	pebbleAddr := strings.TrimSuffix(strings.TrimPrefix(ca.dir, "https://"), "/dir")
	rl := testenv.NewRelay(t, pebbleAddr)
	ca.dir = "https://" + rl.Addr + "/dir"
	r := newTestRuntime(t, ca, nil, Options{FailBackoff: 10 * time.Minute})

	r.mustGet(t, "before.example.com") // the relay works, the account exists
	if n := ca.pebble.Orders(); n != 1 {
		t.Fatalf("%d orders, want 1", n)
	}

	rl.Close()
	if _, err := r.get(t.Context(), "during.example.com"); err == nil {
		t.Fatal("an order succeeded with the CA cut off")
	} else if _, ok := errors.AsType[PauseError](err); ok {
		t.Fatalf("the first order after the cut was refused by a pause: %v", err)
	}
	if _, err := loadBackoff(t, r, "during.example.com"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backoff record after an unreachable CA: %v, want none", err)
	}
	if _, err := r.get(t.Context(), "paused.example.com"); err == nil {
		t.Fatal("an order succeeded with the CA cut off")
	} else if _, ok := errors.AsType[PauseError](err); !ok {
		t.Fatalf("second name while the CA is cut off: %v, want a PauseError", err)
	}

	// back, but the pause (5 s from the failure) lasts: nothing reaches it
	rl.Open()
	accepted := rl.Accepted()
	r.cas[0].pause.mu.Lock()
	pauseEnds := r.cas[0].pause.until
	r.cas[0].pause.mu.Unlock()
	_, err := r.get(t.Context(), "paused.example.com")
	switch _, paused := errors.AsType[PauseError](err); {
	case paused:
		if n := rl.Accepted() - accepted; n != 0 {
			t.Fatalf("%d connections reached the CA during the pause, want none", n)
		}
		if n := ca.pebble.Orders(); n != 1 {
			t.Fatalf("%d orders after the outage and the pause, want still 1", n)
		}
	case time.Now().Before(pauseEnds):
		t.Fatalf("get during the pause: %v, want a PauseError", err)
	default: // the machine was too slow to get there inside the pause
		t.Logf("the pause ended before the get (%v): not checked that it keeps the node away from the CA", err)
	}
	for r.cas[0].pause.check(r.caKey()) != nil {
		time.Sleep(100 * time.Millisecond)
	}
	r.mustGet(t, "paused.example.com")
	if n := ca.pebble.OrdersFor("paused.example.com"); n != 1 {
		t.Fatalf("%d orders for paused.example.com, want 1", n)
	}
	if err := r.cas[0].pause.check(r.caKey()); err != nil {
		t.Fatalf("still paused after the CA answered: %v", err)
	}
	for _, name := range []string{"during.example.com", "paused.example.com"} {
		if _, err := loadBackoff(t, r, name); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("backoff record of %s: %v, want none", name, err)
		}
	}
}

// TestCAPauseLoggedOnce: an outage is logged when it starts (once, however
// many orders fail during it) and when the CA answers again; the pause
// doubles from 5 s while the CA stays unreachable, up to 5 min.
func TestCAPauseLoggedOnce(t *testing.T) {
	r := buildRuntime(t, noCA, nil, Options{})
	core, logs := observer.New(zapcore.InfoLevel)
	r.logger = zap.New(core)
	cause := errors.New("dial tcp 127.0.0.1:1: connection refused")

	var steps []time.Duration
	for range 8 {
		r.caUnreachable(r.cas[0], "a.example.com", cause)
		steps = append(steps, r.cas[0].pause.step)
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute}
	if !slices.Equal(steps, want) {
		t.Fatalf("pauses %v, want %v", steps, want)
	}
	if n := logs.FilterMessageSnippet("cannot be reached").Len(); n != 1 {
		t.Fatalf("the outage was logged %d times, want once", n)
	}
	r.caAnswered(r.cas[0])
	r.caAnswered(r.cas[0])
	if n := logs.FilterMessageSnippet("answers again").Len(); n != 1 {
		t.Fatalf("the CA's return was logged %d times, want once", n)
	}
	if err := r.cas[0].pause.check(r.caKey()); err != nil {
		t.Fatalf("still paused after the CA answered: %v", err)
	}
	r.caUnreachable(r.cas[0], "b.example.com", cause) // a new outage
	if n := logs.FilterMessageSnippet("cannot be reached").Len(); n != 2 || r.cas[0].pause.step != 5*time.Second {
		t.Fatalf("a new outage: logged %d times in all, pause %s; want 2 and 5s", n, r.cas[0].pause.step)
	}
}

// TestOrderEndIsNotUnreachable: a request cut off because the order's own
// context ended (issue_timeout, the config unloaded) does not make the CA
// unreachable (no node-wide pause); a refused connection does.
func TestOrderEndIsNotUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 16)
	defer func() {
		ln.Close()
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	}()
	go func() { // accepts and never answers
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case accepted <- c:
			default:
				c.Close()
			}
		}
	}()
	tr := &caTransport{next: http.DefaultTransport, ca: "test-ca"}
	o := &orderVerdict{name: "a.example.com"}
	v := o.at("test-ca")
	ctx, cancel := context.WithTimeout(context.WithValue(t.Context(), verdictKey{}, o), 200*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ln.Addr().String()+"/dir", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.RoundTrip(req); err == nil {
		t.Fatal("a request to a CA that never answers succeeded")
	}
	if v.unreachable != nil {
		t.Fatalf("the order's own deadline counted as an unreachable CA: %v", v.unreachable)
	}

	free := testenv.FreePort(t)
	req, err = http.NewRequestWithContext(context.WithValue(t.Context(), verdictKey{}, o), http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(free)+"/dir", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.RoundTrip(req); err == nil {
		t.Fatal("a request to a closed port succeeded")
	}
	if v.unreachable == nil {
		t.Fatal("a refused connection did not count as an unreachable CA")
	}
}

// TestRateLimitPausesItsScope: the CA's rateLimited answer, recorded in
// the shared storage, pauses the orders in its scope on every node until
// its Retry-After: the registered domain its message names, else the
// whole account; a get in the scope is refused without an order, one
// outside it is not affected.
func TestRateLimitPausesItsScope(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	a := buildRuntime(t, noCA, storage, Options{})
	b := buildRuntime(t, noCA, storage, Options{}) // another node

	domain := acme.Problem{Type: acme.ProblemTypeNamespace + "rateLimited", Status: 429,
		Detail: `too many certificates (50) already issued for "limited.example" in the last 168h0m0s`}
	a.setRateLimit(a.cas[0], "x.limited.example", &domain, time.Now().Add(time.Hour))
	for _, name := range []string{"x.limited.example", "y.z.limited.example"} {
		err := b.checkRateLimit(t.Context(), b.cas[0], name)
		if pe, ok := errors.AsType[PauseError](err); !ok || !strings.Contains(string(pe), "limited.example") {
			t.Fatalf("%s on the other node: %v, want a PauseError naming limited.example", name, err)
		}
	}
	if err := b.checkRateLimit(t.Context(), b.cas[0], "free.example.org"); err != nil {
		t.Fatalf("a name outside the rate-limited domain: %v", err)
	}
	if _, err := b.get(t.Context(), "y.limited.example"); err == nil {
		t.Fatal("a get in the paused scope succeeded")
	} else if _, ok := errors.AsType[PauseError](err); !ok {
		t.Fatalf("a get in the paused scope: %v, want a PauseError", err)
	}

	account := acme.Problem{Type: acme.ProblemTypeNamespace + "rateLimited", Status: 429, Detail: "too many new orders recently"}
	a.setRateLimit(a.cas[0], "q.example.net", &account, time.Now().Add(1500*time.Millisecond))
	if err := b.checkRateLimit(t.Context(), b.cas[0], "free.example.org"); err == nil {
		t.Fatal("the account's rate limit did not pause every name")
	}
	time.Sleep(2 * time.Second)
	if err := b.checkRateLimit(t.Context(), b.cas[0], "free.example.org"); err != nil {
		t.Fatalf("after the account's Retry-After: %v", err)
	}
}
