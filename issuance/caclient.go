package issuance

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

// The runtime reads the CA's answers to an order as they pass: a
// transport wrapped around the HTTP client of certmagic's ACME issuer sees
// every response of a request whose context carries an order's verdict
// (verdict.go), and notes there what the CA said: a challenge error, a
// problem naming the identifier, a rate limit, or that the CA could not be
// reached. So the order's outcome is the CA's answer, not a guess from
// certmagic's error text, and a backoff is written only for the name's
// fault.
//
// A GET of the issuer's directory answered without an ACME directory
// fails with an error that says which URL to give as api_uri
// (notDirectory), noted in the verdict as a CA that cannot be used (so
// the node pauses its orders as for an unreachable CA).
//
// Two answers are also acted on while the order runs, because acmez (the
// ACME client under certmagic) does not:
//
//   - an authorization still "pending" whose challenge carries an "error"
//     (step-ca, Caddy's acme_server and Vault keep retrying a failed
//     validation that way, RFC 8555 §8.2) is handed to acmez as "invalid",
//     so the order ends at once with the CA's error instead of polling
//     until issue_timeout; as is one whose validation has run longer than
//     the validation bound, with our own error;
//   - a "pending" authorization without a Retry-After gets one once the
//     first second of polling has passed (quickPolls), growing from 1 s to
//     8 s, so that polling backs off instead of asking every 250 ms for as
//     long as the CA takes; a CA that validates at once is still seen at
//     once.
//
// Upstream, acmez's PollAuthorization would read the challenges' error
// while pending and back off on its own, and certmagic's ACMEIssuer would
// take an http.RoundTripper (its HTTP client is unexported, which is why
// ObserveCA reaches it by reflection, pinned by a test).

// ObserveCA wraps the transport of iss's HTTP client so that the runtime
// sees the CA's answers to its orders. iss must come from
// certmagic.NewACMEIssuer and not be in use yet. validation bounds how
// long a challenge may stay pending before the order counts as failed.
func ObserveCA(iss *certmagic.ACMEIssuer, validation time.Duration) error {
	hc, err := issuerHTTPClient(iss)
	if err != nil {
		return err
	}
	if _, ok := hc.Transport.(*caTransport); ok {
		return nil
	}
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	hc.Transport = &caTransport{next: next, validation: validation, directories: directoryURLs(iss), profile: iss.Profile, ca: iss.IssuerKey()}
	return nil
}

// directoryURLs returns the directory URLs iss fetches: its CA and its
// TestCA, when set.
func directoryURLs(iss *certmagic.ACMEIssuer) []string {
	var dirs []string
	for _, u := range []string{iss.CA, iss.TestCA} {
		if u != "" && !slices.Contains(dirs, u) {
			dirs = append(dirs, u)
		}
	}
	return dirs
}

// issuerHTTPClient returns the *http.Client certmagic made for iss (its
// unexported field httpClient), with which acmez talks to the CA.
func issuerHTTPClient(iss *certmagic.ACMEIssuer) (*http.Client, error) {
	f := reflect.ValueOf(iss).Elem().FieldByName("httpClient")
	if !f.IsValid() || f.Type() != reflect.TypeFor[*http.Client]() || f.IsNil() {
		return nil, errors.New("certmagic.ACMEIssuer has no HTTP client to observe (field httpClient); was it made by certmagic.NewACMEIssuer?")
	}
	return (*http.Client)(f.UnsafePointer()), nil
}

// caTransport is the observing transport.
type caTransport struct {
	next        http.RoundTripper
	validation  time.Duration
	directories []string // the issuer's directory URLs (see notDirectory)
	profile     string   // the issuer's ACME profile ("": the CA's default)
	ca          string   // the issuer's key: whose verdict its answers mark
}

// maxCABody bounds the CA's JSON answers read here (authorizations and
// problems are a few KB).
const maxCABody = 1 << 20

func (t *caTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	var v *verdict
	o, ok := req.Context().Value(verdictKey{}).(*orderVerdict)
	if ok {
		v = o.at(t.ca)
	}
	if err == nil {
		// for every request, an order's or not: the CA is of no use
		if resp, err = t.notDirectory(req, resp); err != nil {
			if ok {
				v.noteUnreachable(err)
			}
			return nil, err
		}
	}
	if !ok {
		return resp, err // not an order's request (ARI, revocation, …)
	}
	if err != nil {
		if req.Context().Err() == nil { // not the order's own end (issue_timeout, unload)
			v.noteUnreachable(fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err))
		}
		return resp, err
	}
	media, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	isJSON := media == "application/json" || media == "application/problem+json"
	if !isJSON || resp.StatusCode < 200 || (resp.StatusCode >= 300 && resp.StatusCode < 400) {
		if resp.StatusCode >= 500 {
			v.noteUnreachable(fmt.Errorf("%s %s: HTTP %d", req.Method, req.URL.Redacted(), resp.StatusCode))
		}
		return resp, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxCABody))
	_ = resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading the CA's answer to %s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))

	switch {
	case resp.StatusCode >= 400:
		t.noteProblem(v, req, resp, body)
	case req.Method == http.MethodPost:
		if out := t.authorization(v, resp, body); out != nil {
			resp.Body = io.NopCloser(bytes.NewReader(out))
			resp.ContentLength = int64(len(out))
			resp.Header.Del("Content-Length")
		}
	}
	return resp, nil
}

// notDirectory returns an error saying which URL to configure when resp
// answers a GET of the issuer's directory without an ACME directory: a
// 2xx whose body is not a JSON object with newNonce, newAccount and
// newOrder, or a 404. Such a URL is mostly a bare origin given as api_uri,
// to which /directory was appended (as Kong does), on a CA whose directory
// is elsewhere: Caddy's acme_server answers it with an empty 200, which
// acmez reports only as "response Content-Type is  but target container is
// not io.Writer: *acme.Directory". Any other answer is returned as it is
// (with its body put back when it was read).
func (t *caTransport) notDirectory(req *http.Request, resp *http.Response) (*http.Response, error) {
	if req.Method != http.MethodGet || !slices.Contains(t.directories, req.URL.String()) {
		return resp, nil
	}
	var what string
	switch {
	case resp.StatusCode == http.StatusNotFound:
		what = "HTTP 404"
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxCABody))
		_ = resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the CA's answer to %s %s: %w", req.Method, req.URL.Redacted(), err)
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		media, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		var dir struct {
			NewNonce   string `json:"newNonce"`
			NewAccount string `json:"newAccount"`
			NewOrder   string `json:"newOrder"`
			Meta       struct {
				Profiles map[string]any `json:"profiles"`
			} `json:"meta"`
		}
		switch {
		case len(bytes.TrimSpace(body)) == 0:
			what = fmt.Sprintf("HTTP %d with an empty body", resp.StatusCode)
		case media != "application/json":
			what = fmt.Sprintf("HTTP %d with Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		case json.Unmarshal(body, &dir) != nil || dir.NewNonce == "" || dir.NewAccount == "" || dir.NewOrder == "":
			what = fmt.Sprintf("HTTP %d with JSON that is not an ACME directory (newNonce, newAccount, newOrder)", resp.StatusCode)
		case t.profile != "" && dir.Meta.Profiles[t.profile] == nil:
			_ = resp.Body.Close()
			return nil, unknownProfile(t.profile, req.URL.Redacted(), slices.Sorted(maps.Keys(dir.Meta.Profiles)))
		default:
			return resp, nil
		}
	default:
		return resp, nil
	}
	_ = resp.Body.Close()
	return nil, fmt.Errorf("api_uri: the CA did not answer with an ACME directory at %s (%s); give the directory URL, e.g. %s://%s/acme/<name>/directory",
		req.URL.Redacted(), what, req.URL.Scheme, req.URL.Host)
}

// unknownProfile is the error for a directory that does not offer the
// configured profile.
func unknownProfile(profile, dir string, offered []string) error {
	list := "none"
	if len(offered) > 0 {
		list = strings.Join(offered, ", ")
	}
	return fmt.Errorf("profile: the CA at %s does not offer profile %q (it offers: %s); set profile to one of them, or leave it out for the CA's default", dir, profile, list)
}

// The problem types that say the CA will not issue for the identifier:
// always (identifierProblems), or when they answer a new order
// (orderProblems; they may be about the account or the request too).
var (
	identifierProblems = []string{"rejectedIdentifier", "unsupportedIdentifier", "caa", "dns"}
	orderProblems      = []string{"malformed", "compound"}
)

// noteProblem notes an error answer (a problem document, RFC 8555 §6.7).
func (t *caTransport) noteProblem(v *verdict, req *http.Request, resp *http.Response, body []byte) {
	var p acme.Problem
	if err := json.Unmarshal(body, &p); err != nil || p.Type == "" {
		if resp.StatusCode >= 500 {
			v.noteUnreachable(fmt.Errorf("%s %s: HTTP %d", req.Method, req.URL.Redacted(), resp.StatusCode))
		}
		return
	}
	if p.Status == 0 {
		p.Status = resp.StatusCode
	}
	kind := strings.TrimPrefix(p.Type, acme.ProblemTypeNamespace)
	switch {
	case kind == "rateLimited":
		v.noteRateLimited(p, retryAfter(resp.Header.Get("Retry-After")))
	case kind == "badNonce":
		// acmez retries it
	case resp.StatusCode >= 500 || kind == "serverInternal":
		v.noteUnreachable(fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), p))
	case kind == "invalidProfile":
		// a configuration error, as a CA of no use: the node pauses its
		// orders instead of backing every name off
		v.noteUnreachable(fmt.Errorf("profile: the CA refused profile %q: %w", t.profile, p))
	case slices.Contains(identifierProblems, kind),
		slices.Contains(orderProblems, kind) && isNewOrder(req):
		v.noteRefused(p.Error())
	}
}

// isNewOrder reports whether req is a new order: its JWS payload lists
// identifiers (RFC 8555 §7.4).
func isNewOrder(req *http.Request) bool {
	if req.GetBody == nil {
		return false
	}
	rc, err := req.GetBody()
	if err != nil {
		return false
	}
	defer rc.Close()
	var jws struct {
		Payload string `json:"payload"`
	}
	if json.NewDecoder(io.LimitReader(rc, maxCABody)).Decode(&jws) != nil {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return false
	}
	var order struct {
		Identifiers []acme.Identifier `json:"identifiers"`
	}
	return json.Unmarshal(payload, &order) == nil && len(order.Identifiers) > 0
}

// problemText is p as acme.Problem.Error writes it, without "HTTP 0 " for
// a problem that carries no status (a challenge's error).
func problemText(p acme.Problem) string {
	if p.Status == 0 {
		return strings.TrimPrefix(p.Error(), "HTTP 0 ")
	}
	return p.Error()
}

// retryAfter parses a Retry-After header (seconds or an HTTP date); zero
// when absent or unreadable.
func retryAfter(h string) time.Time {
	if h == "" {
		return time.Time{}
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return time.Now().Add(time.Duration(s) * time.Second)
	}
	if at, err := http.ParseTime(h); err == nil {
		return at
	}
	return time.Time{}
}

// authz is what the transport reads of an authorization.
type authz struct {
	Status     string          `json:"status"`
	Identifier acme.Identifier `json:"identifier"`
	Challenges []struct {
		Type   string        `json:"type"`
		Status string        `json:"status"`
		Error  *acme.Problem `json:"error"`
	} `json:"challenges"`
}

// quickPolls is how many "pending" answers to an order's authorizations
// are passed on without a Retry-After: the first is the answer acmez
// reads before solving, the next ones answer its polls, 250 ms apart
// (acmez's interval), so a validation done within a second of the
// challenge being accepted is seen within 250 ms. The answers after those
// get 1, 1, 2, 2, 4, 4, then 8 s. With the CA validating in 0.3 s, the
// authorization was first seen valid 1.25 s after the challenge when the
// back-off began at once (BenchmarkIssuance, BENCHMARKS.md).
const quickPolls = 4

// authorization reads a POST answer that is an authorization: a failed
// challenge is noted as the CA's refusal; a pending one with an error, or
// pending past the validation bound, is returned as the body to hand to
// acmez (status "invalid"); a pending one gets a Retry-After. It returns
// nil to pass the body on unchanged.
func (t *caTransport) authorization(v *verdict, resp *http.Response, body []byte) []byte {
	if !bytes.Contains(body, []byte(`"challenges"`)) {
		return nil
	}
	var a authz
	if err := json.Unmarshal(body, &a); err != nil || a.Identifier.Value == "" {
		return nil
	}
	var failed *acme.Problem
	for _, c := range a.Challenges {
		if c.Error != nil && (c.Status == acme.StatusInvalid || a.Status == acme.StatusPending || a.Status == acme.StatusInvalid) {
			failed = c.Error
			break
		}
	}
	switch a.Status {
	case acme.StatusInvalid:
		if failed != nil {
			v.noteRefused(fmt.Sprintf("the CA could not validate %s: %s", a.Identifier.Value, problemText(*failed)))
		} else {
			v.noteRefused(fmt.Sprintf("the CA marked the authorization of %s invalid", a.Identifier.Value))
		}
		return nil
	case acme.StatusPending:
	default:
		return nil
	}

	polls, since := v.notePending()
	var reason string
	switch {
	case failed != nil:
		reason = fmt.Sprintf("the CA could not validate %s: %s", a.Identifier.Value, problemText(*failed))
	case t.validation > 0 && since > t.validation:
		reason = fmt.Sprintf("the CA did not validate %s within %s (it still says pending); counted as a failed validation", a.Identifier.Value, t.validation.Round(time.Second))
	default:
		if resp.Header.Get("Retry-After") == "" && polls >= quickPolls {
			resp.Header.Set("Retry-After", strconv.Itoa(min(1<<((polls-quickPolls)/2), 8)))
		}
		return nil
	}
	v.noteRefused(reason)
	return invalidated(body, failed == nil, reason)
}

// invalidated returns the authorization body with its status and its
// pending challenges' status "invalid", for acmez to end the order on;
// when no challenge carries the CA's error (addReason), the pending ones
// get reason as theirs.
func invalidated(body []byte, addReason bool, reason string) []byte {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	m["status"] = acme.StatusInvalid
	chals, _ := m["challenges"].([]any)
	for _, c := range chals {
		c, ok := c.(map[string]any)
		if !ok || c["status"] != acme.StatusPending {
			continue
		}
		c["status"] = acme.StatusInvalid
		if _, ok := c["error"]; !ok && addReason {
			c["error"] = map[string]any{"type": "about:blank", "detail": reason}
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		return nil
	}
	return out
}
