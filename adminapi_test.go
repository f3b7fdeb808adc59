package caddyacme

import (
	"crypto/sha1" //nolint:gosec // Kong's digest
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/admin"
	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
)

// withAdmin turns on Caddy's admin listener on a free port in a config
// made by rig.config, and returns the new config and the admin base URL.
func withAdmin(t *testing.T, cfg []byte) ([]byte, string) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(cfg, &m); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	m["admin"] = map[string]any{"listen": addr, "config": map[string]any{"persist": false}}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out, "http://" + addr
}

// call sends one admin request (Host is the listener's address, as the
// admin server's origin check wants) and returns the status and body.
func call(t *testing.T, method, url, contentType, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	client := &http.Client{Timeout: 2 * time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(data)
}

func mustCall(t *testing.T, method, url, contentType, body string, status int) string {
	t.Helper()
	got, out := call(t, method, url, contentType, body)
	if got != status {
		t.Fatalf("%s %s %s: status %d, want %d; body %s", method, url, body, got, status, out)
	}
	return out
}

func TestAdminAPI(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{"domains": []string{"allowed.example.com", "localhost"}}), nil))
	app := r.load(cfg)
	const host = "allowed.example.com"

	// order through the API: 201, and the certificate is served
	out := mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, 201)
	if !strings.Contains(out, `"message":"certificate for host allowed.example.com is created"`) {
		t.Fatalf("POST body %s", out)
	}
	if n := r.pebble.OrdersFor(host); n != 1 {
		t.Fatalf("%d orders for %s, want 1", n, host)
	}
	leaf := r.mustHandshake(host)[0]
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("handshake after POST ordered again: %v", r.orderNames())
	}

	// a name outside the allowlist is refused without an order (Kong orders it)
	out = mustCall(t, "POST", base+"/acme", "application/x-www-form-urlencoded", "host=denied.example.com", 400)
	if !strings.Contains(out, `"error":`) || !strings.Contains(out, "not allowed") {
		t.Fatalf("POST denied body %s", out)
	}
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"allowed.example.com:443"}`, 400)
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("refused names were ordered: %v", r.orderNames())
	}

	// the sanity check reaches this Caddy's HTTP port
	out = mustCall(t, "POST", base+"/acme", "application/json", `{"host":"localhost","test_http_challenge_flow":true}`, 200)
	if !strings.Contains(out, "sanity test for host localhost passed") {
		t.Fatalf("sanity body %s", out)
	}

	// the list and one certificate, with Kong's fields
	var list struct {
		Data []admin.CertInfo `json:"data"`
	}
	out = mustCall(t, "GET", base+"/acme/certificates", "", "", 200)
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Data) != 1 {
		t.Fatalf("list %s, want one certificate", out)
	}
	c := list.Data[0]
	digest := sha1.Sum(leaf.Raw) //nolint:gosec
	want := admin.NewCertInfo(host, leaf, time.Now())
	if c.Host != host || !c.Valid || c.PubkeyType != "id-ecPublicKey" || c.IssuerCN != leaf.Issuer.CommonName ||
		c.SerialNumber != want.SerialNumber || c.Digest != want.Digest || len(digest) != 20 ||
		!c.NotAfter.Equal(leaf.NotAfter) || c.RenewalDue || strings.Join(c.SANs, ",") != host {
		t.Fatalf("listed %+v, want %+v", c, want)
	}
	for _, f := range []string{`"not_before":"`, `"not_after":"`, `Z"`} {
		if !strings.Contains(out, f) {
			t.Fatalf("list %s lacks %s", out, f)
		}
	}
	mustCall(t, "GET", base+"/acme/certificates?invalid_only=true", "", "", 200)
	out = mustCall(t, "GET", base+"/acme/certificates/"+host, "", "", 200)
	if !strings.Contains(out, `"serial_number":"`+want.SerialNumber+`"`) {
		t.Fatalf("GET one %s", out)
	}
	// a page is read in one batch; each host gets its own answer
	corrupt := certmagic.StorageKeys.SiteCert(app.issuer.IssuerKey(), "corrupt.example.com")
	if err := app.storage.Store(t.Context(), corrupt, []byte("not PEM")); err != nil {
		t.Fatal(err)
	}
	infos, errs := app.Certificates(t.Context(), []string{host, "missing.example.com", "corrupt.example.com", "ALLOWED.example.com."})
	if errs[0] != nil || infos[0].SerialNumber != want.SerialNumber || errs[3] != nil || infos[3].SerialNumber != want.SerialNumber {
		t.Fatalf("Certificates of the stored host: %+v %v / %+v %v", infos[0], errs[0], infos[3], errs[3])
	}
	if !errors.Is(errs[1], fs.ErrNotExist) {
		t.Fatalf("Certificates of a missing host: %v, want fs.ErrNotExist", errs[1])
	}
	if errs[2] == nil || !strings.Contains(errs[2].Error(), "no PEM certificate in storage for corrupt.example.com") {
		t.Fatalf("Certificates of a corrupt host: %v", errs[2])
	}
	if err := app.storage.Delete(t.Context(), corrupt); err != nil {
		t.Fatal(err)
	}

	// POST for a name that has a certificate renews it
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, 201)
	if n := r.pebble.OrdersFor(host); n != 2 {
		t.Fatalf("%d orders for %s after the second POST, want 2", n, host)
	}
	if renewed := r.mustHandshake(host)[0]; renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("second POST did not replace the served certificate")
	}

	// delete: gone from storage and the API
	mustCall(t, "DELETE", base+"/acme/certificates/"+host, "", "", 200)
	out = mustCall(t, "GET", base+"/acme/certificates/"+host, "", "", 404)
	if !strings.Contains(out, "not found in storage") {
		t.Fatalf("GET deleted %s", out)
	}
	mustCall(t, "DELETE", base+"/acme/certificates/"+host, "", "", 404)

	// PATCH starts a scan whose status GET /acme shows
	out = mustCall(t, "PATCH", base+"/acme", "", "", 202)
	if !strings.Contains(out, "Renewal process started successfully") {
		t.Fatalf("PATCH %s", out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out = mustCall(t, "GET", base+"/acme", "", "", 200)
		if strings.Contains(out, `"start"`) && strings.Contains(out, `"next_scan"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no scan status after PATCH: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// this node's next periodic scan, with the stored status
	var st struct {
		Data struct {
			Start    time.Time `json:"start"`
			NextScan time.Time `json:"next_scan"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("GET /acme: %v: %s", err, out)
	}
	if d := time.Until(st.Data.NextScan); d < 20*time.Hour || d > 27*time.Hour || st.Data.Start.IsZero() {
		t.Fatalf("GET /acme: next_scan in %s, start %s; want a day (±10%%) away and a start: %s", d, st.Data.Start, out)
	}

	// 409: a name in backoff, and one being obtained
	storeBackoff(t, app, "localhost", time.Minute)
	out = mustCall(t, "POST", base+"/acme", "application/json", `{"host":"localhost"}`, 409)
	if !strings.Contains(out, "please try again in") {
		t.Fatalf("POST in backoff: %s", out)
	}
	// the issue lock held, as by another node ordering host: a handshake's
	// job waits for it until the app stops
	if err := app.storage.Lock(t.Context(), issuance.IssueLockKey(host)); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = r.handshake(host) }()
	for deadline := time.Now().Add(10 * time.Second); !app.rt.Running(host); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no job started for the handshake")
		}
	}
	out = mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, 409)
	if !strings.Contains(out, "already being obtained") {
		t.Fatalf("POST in progress: %s", out)
	}
	if n := r.pebble.Orders(); n != 2 {
		t.Fatalf("409s ordered: %v", r.orderNames())
	}

	// a status in storage that is not ours: 500 with the reason
	if err := app.storage.Store(t.Context(), issuance.StatusKey, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	out = mustCall(t, "GET", base+"/acme", "", "", 500)
	if !strings.Contains(out, `"error":"reading renewal status: caddy-acme/renew_status.json holds no JSON object`) {
		t.Fatalf("GET /acme with a corrupt status: %s", out)
	}

	mustCall(t, "PUT", base+"/acme", "", "", 405)
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":`, 400)
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+strings.Repeat("a", 70000)+`"}`, 413)
}

// storeBackoff records a backoff of name for d (from now, with the app's
// fail_backoff_minutes), as a node whose order the CA refused does.
func storeBackoff(t *testing.T, app *App, name string, d time.Duration) {
	t.Helper()
	failed := time.Now().Add(d - app.set.FailBackoff).UTC()
	data, err := json.Marshal(map[string]any{"host": name, "failed_at": failed, "until": time.Now().Add(d).UTC(), "error": "test failure"})
	if err != nil {
		t.Fatal(err)
	}
	if err := app.storage.Store(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), name), data); err != nil {
		t.Fatal(err)
	}
}

// TestAdminAPINotConfigured: without the acme app the routes answer 404.
func TestAdminAPINotConfigured(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	cfg := `{"admin":{"listen":"` + addr + `","config":{"persist":false}}}`
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	for _, p := range []string{"/acme", "/acme/certificates"} {
		out := mustCall(t, "GET", "http://"+addr+p, "", "", 404)
		if !strings.Contains(out, `"error":"the acme app is not configured`) {
			t.Fatalf("GET %s: %s", p, out)
		}
	}
}

// TestAdminAPIOrderFailure: an order the CA refuses (here: HTTP-01
// validation cannot reach Caddy) answers 500 with the CA's error, and sets
// the backoff, so that the next POST answers 409 without ordering.
func TestAdminAPIOrderFailure(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t)})
	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{"domains": []string{"fail.example.com"}}), nil))
	r.load(cfg)

	out := mustCall(t, "POST", base+"/acme", "application/json", `{"host":"fail.example.com"}`, 500)
	if !strings.Contains(out, `"error":"failed to update certificate: `) || !strings.Contains(out, "urn:ietf:params:acme:error") {
		t.Fatalf("POST with a failing validation: %s, want the CA's error", out)
	}
	out = mustCall(t, "POST", base+"/acme", "application/json", `{"host":"fail.example.com"}`, 409)
	if !strings.Contains(out, "because of previous failure") {
		t.Fatalf("POST in backoff: %s", out)
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders = %d, want 1", n)
	}
}
