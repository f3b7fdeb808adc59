package issuance

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

// FuzzCAAnswer feeds the CA transport answers of any shape, as a CA (or
// something between it and the app) could send: it never panics, a body
// it hands to acmez instead is a JSON authorization whose status is
// "invalid" and whose verdict records why, and the Retry-After it adds is
// a number of seconds acmez can read.
func FuzzCAAnswer(f *testing.F) {
	f.Add(200, `{"status":"pending","identifier":{"type":"dns","value":"a.example.com"},"challenges":[{"type":"http-01","status":"pending","error":{"type":"urn:ietf:params:acme:error:connection","detail":"refused"}}]}`, "", int64(0))
	f.Add(200, `{"status":"pending","identifier":{"type":"dns","value":"a.example.com"},"challenges":[{"type":"http-01","status":"pending"}]}`, "", int64(1))
	f.Add(200, `{"status":"invalid","identifier":{"type":"dns","value":"a"},"challenges":[]}`, "", int64(0))
	f.Add(429, `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many certificates for \"example.com\""}`, "3600", int64(0))
	f.Add(400, `{"type":"urn:ietf:params:acme:error:malformed"}`, "x", int64(0))
	f.Add(503, `not json`, "", int64(0))
	f.Fuzz(func(t *testing.T, status int, body, retry string, validation int64) {
		if status < 100 || status > 999 {
			return
		}
		tr := &caTransport{validation: time.Duration(validation)}
		v := &verdict{ca: "test-ca"}
		req, err := http.NewRequest(http.MethodPost, "https://ca.test/authz/1", bytes.NewReader([]byte(`{"payload":""}`)))
		if err != nil {
			t.Fatal(err)
		}
		resp := &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {"application/json"}}}
		if retry != "" {
			resp.Header.Set("Retry-After", retry)
		}
		if status >= 400 {
			tr.noteProblem(v, req, resp, []byte(body))
			return
		}
		out := tr.authorization(v, resp, []byte(body))
		if out == nil {
			return
		}
		var a authz
		if err := json.Unmarshal(out, &a); err != nil || a.Status != "invalid" {
			t.Fatalf("handed acmez %q (status %q, %v)", out, a.Status, err)
		}
		if v.refused == "" {
			t.Fatal("an authorization handed back as invalid left no reason in the verdict")
		}
	})
}
