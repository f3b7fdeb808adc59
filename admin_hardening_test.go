package caddyacme

import (
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// The admin API's hardening (issue 13), through a real admin listener and
// a real Pebble: the {host} of /acme/certificates/{host} is checked as
// POST /acme's, boolean flags are booleans, one unreadable certificate does
// not fail the list, no error shows a storage path, and the sanity check
// reaches no non-public address with a public CA and echoes no body.

// TestAdminCertificateHost: an encoded space, NUL or backslash, a slash, a
// port, a wildcard but a wildcard subject *.x, an overlong name or label is 400 and leaves the
// certificate in storage and served; the normalised name (case, trailing
// dot) deletes it.
func TestAdminCertificateHost(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	const host = "demo.example.com"
	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{"domains": []string{host}}), nil))
	app := r.load(cfg)
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, 201)
	leaf := r.mustHandshake(host)[0]
	certKey := certmagic.StorageKeys.SiteCert(app.issuer.IssuerKey(), host)

	long := strings.Repeat("a", 5000)
	for _, tc := range []struct {
		name, path, want string
	}{
		{"encoded space", host + "%20", "host must be provided and containing a single domain"},
		{"encoded NUL", host + "%00", "invalid host"},
		{"encoded backslash", host + "%5C", "invalid host"},
		{"encoded slash", "x%2F" + host, "host must be provided and containing a single domain"},
		{"leading space", "%20" + host, "host must be provided and containing a single domain"},
		{"port", host + ":443", "port is not allowed in host"},
		{"wildcard inside", "a.%2A.example.com", "wildcard host is not allowed"},
		{"wildcard alone", "%2A", "wildcard host is not allowed"},
		{"two trailing dots", host + "..", "invalid host"},
		{"5000 characters", long, "invalid host: longer than 253 octets (5000)"},
		{"label of 64", strings.Repeat("b", 64) + ".example.com", "longer than 63 octets"},
		{"name of 254", strings.Repeat("abcdefgh.", 27) + "example.com", "longer than 253 octets"},
	} {
		for _, method := range []string{"GET", "DELETE"} {
			t.Run(tc.name+" "+method, func(t *testing.T) {
				out := mustCall(t, method, base+"/acme/certificates/"+tc.path, "", "", 400)
				if !strings.Contains(out, `"error":"`) || !strings.Contains(out, tc.want) {
					t.Fatalf("%s %s: %s, want an error with %q", method, tc.name, out, tc.want)
				}
				if strings.Contains(out, r.storage) || strings.Contains(out, "certificates/") || strings.Contains(out, strings.Repeat("a", 300)) {
					t.Fatalf("%s %s: the error shows a storage path or the long name: %.400s", method, tc.name, out)
				}
				if !app.storage.Exists(t.Context(), certKey) {
					t.Fatalf("%s %s deleted the certificate", method, tc.name)
				}
			})
		}
	}
	// a wildcard subject is a name: not found (nothing stored for it)
	mustCall(t, "GET", base+"/acme/certificates/%2A.example.com", "", "", 404)
	// still in memory: served without a new order
	if got := r.mustHandshake(host)[0]; got.SerialNumber.Cmp(leaf.SerialNumber) != 0 || r.pebble.Orders() != 1 {
		t.Fatalf("after the refused requests: serial %s (want %s), %d orders", got.SerialNumber, leaf.SerialNumber, r.pebble.Orders())
	}

	// the normalised name: found, then deleted from storage and memory
	out := mustCall(t, "GET", base+"/acme/certificates/DEMO.Example.com.", "", "", 200)
	if !strings.Contains(out, `"host":"`+host+`"`) {
		t.Fatalf("GET upper case with a dot: %s", out)
	}
	out = mustCall(t, "DELETE", base+"/acme/certificates/Demo.Example.COM.", "", "", 200)
	if !strings.Contains(out, "certificate for host "+host+" is deleted") {
		t.Fatalf("DELETE: %s", out)
	}
	if app.storage.Exists(t.Context(), certKey) {
		t.Fatal("the certificate is still in storage")
	}
	mustCall(t, "GET", base+"/acme/certificates/"+host, "", "", 404)
	// gone from memory too: the next handshake orders a new one
	if got := r.mustHandshake(host)[0]; got.SerialNumber.Cmp(leaf.SerialNumber) == 0 || r.pebble.OrdersFor(host) != 2 {
		t.Fatalf("after DELETE the handshake got serial %s (the deleted one: %s), %d orders", got.SerialNumber, leaf.SerialNumber, r.pebble.OrdersFor(host))
	}
}

// TestAdminBooleanFlags: revoke and invalid_only take booleans only: a
// value that is not one is 400 and changes nothing (revoke=garbage used to
// delete without revoking); yes/on are true, so revoke=yes revokes.
func TestAdminBooleanFlags(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	const host = "flags.example.com"
	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{"domains": []string{host}}), nil))
	app := r.load(cfg)
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, 201)
	leaf := r.mustHandshake(host)[0]
	certKey := certmagic.StorageKeys.SiteCert(app.issuer.IssuerKey(), host)

	for _, tc := range []struct {
		method, query, want string
	}{
		{"DELETE", "/acme/certificates/" + host + "?revoke=garbage", `"error":"revoke: expected a boolean`},
		{"DELETE", "/acme/certificates/" + host + "?revoke=2", `"error":"revoke: expected a boolean`},
		{"DELETE", "/acme/certificates/" + host + "?revoke=true&revoke=false", `"error":"revoke: conflicting values"`},
		{"GET", "/acme/certificates?invalid_only=garbage", `"error":"invalid_only: expected a boolean`},
		{"GET", "/acme/certificates?invalid_only=yes&invalid_only=no", `"error":"invalid_only: conflicting values"`},
	} {
		out := mustCall(t, tc.method, base+tc.query, "", "", 400)
		if !strings.Contains(out, tc.want) {
			t.Fatalf("%s %s: %s, want %s", tc.method, tc.query, out, tc.want)
		}
		if !app.storage.Exists(t.Context(), certKey) {
			t.Fatalf("%s %s deleted the certificate", tc.method, tc.query)
		}
	}
	if status(t, r, leaf) != "Valid" {
		t.Fatal("refused requests revoked the certificate")
	}
	// booleans in other words: invalid_only=no lists the valid one
	out := mustCall(t, "GET", base+"/acme/certificates?invalid_only=no", "", "", 200)
	if !strings.Contains(out, `"host":"`+host+`"`) {
		t.Fatalf("invalid_only=no: %s", out)
	}
	out = mustCall(t, "GET", base+"/acme/certificates?invalid_only=ON", "", "", 200)
	if strings.Contains(out, host) {
		t.Fatalf("invalid_only=ON lists a valid certificate: %s", out)
	}
	// revoke=yes revokes, then deletes
	out = mustCall(t, "DELETE", base+"/acme/certificates/"+host+"?revoke=yes", "", "", 200)
	if !strings.Contains(out, "is deleted") || app.storage.Exists(t.Context(), certKey) {
		t.Fatalf("DELETE ?revoke=yes: %s", out)
	}
	if s := status(t, r, leaf); s != "Revoked" {
		t.Fatalf("after revoke=yes Pebble says %q, want Revoked", s)
	}
}

// status is Pebble's status of leaf (Valid, Revoked).
func status(t *testing.T, r *rig, leaf *x509.Certificate) string {
	t.Helper()
	resp, err := r.pebble.Client().Get(r.pebble.ManagementURL + "/cert-status-by-serial/" + leaf.SerialNumber.Text(16))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var st struct{ Status string }
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("Pebble's status of %s: %v: %s", leaf.SerialNumber.Text(16), err, data)
	}
	return st.Status
}

// TestAdminListUnreadable: a certificate tampered with in storage is an
// item with its error in GET /acme/certificates; the others are listed with
// all their fields, and nothing shows the storage path.
func TestAdminListUnreadable(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	const host = "good.example.com"
	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{"domains": []string{host}}), nil))
	app := r.load(cfg)
	mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, 201)
	before := mustCall(t, "GET", base+"/acme/certificates/"+host, "", "", 200)

	for name, data := range map[string]string{
		"tampered.example.com": "not PEM",
		"garbled.example.com":  "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
	} {
		if err := app.storage.Store(t.Context(), certmagic.StorageKeys.SiteCert(app.issuer.IssuerKey(), name), []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	out := mustCall(t, "GET", base+"/acme/certificates", "", "", 200)
	if strings.Contains(out, r.storage) {
		t.Fatalf("the list shows the storage path: %s", out)
	}
	var list struct {
		Data []map[string]any `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Data) != 3 {
		t.Fatalf("list %s, want 3 items", out)
	}
	want := map[string]string{
		"garbled.example.com":  "parsing stored certificate of garbled.example.com",
		"tampered.example.com": "no PEM certificate in storage for tampered.example.com",
	}
	for _, item := range list.Data {
		h, _ := item["host"].(string)
		if h == host {
			// as GET of the one certificate shows it
			one, _ := json.Marshal(map[string]any{"data": item})
			if _, hasErr := item["error"]; hasErr || !jsonEqual(t, one, []byte(before)) {
				t.Fatalf("the readable item changed: %v, want %s", item, before)
			}
			continue
		}
		e, _ := item["error"].(string)
		if !strings.Contains(e, want[h]) || item["valid"] != false {
			t.Fatalf("item %v, want the error %q", item, want[h])
		}
	}
	out = mustCall(t, "GET", base+"/acme/certificates?invalid_only=true", "", "", 200)
	if strings.Contains(out, `"host":"`+host+`"`) || !strings.Contains(out, "tampered.example.com") {
		t.Fatalf("invalid_only: %s", out)
	}
	// one unreadable certificate alone: 500 with the reason, no path
	out = mustCall(t, "GET", base+"/acme/certificates/tampered.example.com", "", "", 500)
	if !strings.Contains(out, "no PEM certificate in storage for tampered.example.com") || strings.Contains(out, r.storage) {
		t.Fatalf("GET one tampered: %s", out)
	}
}

// TestAdminSanityCheckPrivateAddress: with a public CA (no trusted_roots)
// and allow_any_domain, the sanity check refuses a loopback or private
// address or a local name before connecting (400 naming the rule); with a
// private CA it connects, and a 5xx answer is reported by its status only,
// never its body.
func TestAdminSanityCheckPrivateAddress(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	var hits atomic.Int32
	const secret = "internal-secret-body-do-not-echo"
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		http.Error(w, secret, http.StatusBadGateway)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	port := ln.Addr().(*net.TCPAddr).Port

	t.Run("public CA", func(t *testing.T) {
		cfg, base := withAdmin(t, r.config(r.acme(map[string]any{"allow_any_domain": true, "trusted_roots": nil, "http_port": port}), nil))
		r.load(cfg)
		for _, host := range []string{"127.0.0.2", "127.0.0.1", "10.1.2.3", "192.168.1.1", "localhost", "foo.localhost", "printer.local"} {
			out := mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`","test_http_challenge_flow":true}`, 400)
			if !strings.Contains(out, "problem found running sanity check for "+host) || !strings.Contains(out, "a public CA does not issue certificates for this name") {
				t.Fatalf("sanity check of %s: %s, want the public-CA rule", host, out)
			}
		}
		if n := hits.Load(); n != 0 {
			t.Fatalf("the sanity check connected %d times", n)
		}
	})

	t.Run("private CA", func(t *testing.T) {
		cfg, base := withAdmin(t, r.config(r.acme(map[string]any{"allow_any_domain": true, "http_port": port}), nil))
		r.load(cfg)
		out := mustCall(t, "POST", base+"/acme", "application/json", `{"host":"127.0.0.1","test_http_challenge_flow":true}`, 400)
		if !strings.Contains(out, "unexpected status code: "+strconv.Itoa(http.StatusBadGateway)) || strings.Contains(out, secret) {
			t.Fatalf("sanity check against a 502: %s, want the status and not the body", out)
		}
		if hits.Load() != 1 {
			t.Fatalf("the sanity check connected %d times, want 1", hits.Load())
		}
	})
}
