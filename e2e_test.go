package caddyacme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
)

// The tests in this file run Caddy in the test process (caddy.Load of a
// JSON config) against a real Pebble whose HTTP-01 validation connects to
// that Caddy, and drive it with real TLS clients. Caddy has one running
// config per process, so they do not run in parallel.

// rig is one Pebble and the ports and storage of the Caddy under test.
type rig struct {
	t         *testing.T
	pebble    *testenv.Pebble
	httpPort  int
	httpsPort int
	storage   string
	logFile   string // if set, Caddy logs here at DEBUG level
}

// newRig starts Pebble with its HTTP-01 validation pointed at the Caddy
// HTTP port the rig will use (unless opts.HTTPPort says otherwise).
func newRig(t *testing.T, opts testenv.PebbleOptions) *rig {
	t.Helper()
	r := &rig{
		t:         t,
		httpPort:  testenv.FreePort(t),
		httpsPort: testenv.FreePort(t),
		storage:   t.TempDir(),
	}
	if opts.HTTPPort == 0 {
		opts.HTTPPort = r.httpPort
	}
	r.pebble = testenv.StartPebble(t, opts)
	return r
}

// acme returns the acme app config for this rig's Pebble, with fields
// overridden (a nil value deletes a field).
func (r *rig) acme(fields map[string]any) map[string]any {
	app := map[string]any{
		"account_email": "ops@example.com",
		"api_uri":       r.pebble.DirectoryURL,
		"trusted_roots": []string{r.pebble.ListenerCAFile},
		"http_port":     r.httpPort,
		"cert_type":     "ecc",
		"issue_timeout": "60s",
	}
	return override(app, fields)
}

// config is a whole Caddy config: the acme app, an HTTPS server whose
// certificates come from the policy, and an HTTP server with the
// acme_challenge handler followed by a 418 "next" response.
func (r *rig) config(acmeApp map[string]any, policy map[string]any) []byte {
	if policy == nil {
		policy = map[string]any{"get_certificate": []any{map[string]any{"via": "acme"}}}
	}
	logs := map[string]any{"level": "WARN"}
	if r.logFile != "" {
		logs = map[string]any{"level": "DEBUG", "writer": map[string]any{"output": "file", "filename": r.logFile}}
	}
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"storage": map[string]any{"module": "file_system", "root": r.storage},
		"logging": map[string]any{"logs": map[string]any{"default": logs}},
		"apps": map[string]any{
			"acme": acmeApp,
			"tls":  map[string]any{"automation": map[string]any{"policies": []any{policy}}},
			"http": map[string]any{
				"http_port":  r.httpPort,
				"https_port": r.httpsPort,
				"servers": map[string]any{
					"https": map[string]any{
						"listen":                  []string{"127.0.0.1:" + strconv.Itoa(r.httpsPort)},
						"routes":                  []any{route(map[string]any{"handler": "static_response", "body": "hello {http.request.host}"})},
						"tls_connection_policies": []any{map[string]any{}},
						"automatic_https":         map[string]any{"disable": true},
					},
					"http": map[string]any{
						"listen": []string{"127.0.0.1:" + strconv.Itoa(r.httpPort)},
						"routes": []any{route(
							map[string]any{"handler": "acme_challenge"},
							map[string]any{"handler": "static_response", "status_code": 418, "body": "next"},
						)},
						"automatic_https": map[string]any{"disable": true},
					},
				},
			},
		},
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	return out
}

func route(handlers ...map[string]any) map[string]any {
	return map[string]any{"handle": handlers}
}

// load runs the config in this process until the test ends.
func (r *rig) load(cfg []byte) *App {
	r.t.Helper()
	return loadCaddy(r.t, cfg)
}

// handshake connects to the HTTPS server with SNI name, verifying the chain
// against Pebble's roots, and returns the verified chain.
func (r *rig) handshake(name string) ([]*x509.Certificate, error) {
	r.t.Helper()
	return verifiedHandshake(r.httpsPort, name, r.pebble.RootPool(r.t), 5*time.Second)
}

// verifiedHandshake connects to 127.0.0.1:port with SNI name, verifying
// the chain against roots, giving up (and closing the connection) after
// timeout, and returns the verified chain.
func verifiedHandshake(port int, name string, roots *x509.CertPool, timeout time.Duration) ([]*x509.Certificate, error) {
	dialer := &net.Dialer{Timeout: timeout}
	conn, err := tls.DialWithDialer(dialer, "tcp", "127.0.0.1:"+strconv.Itoa(port), &tls.Config{
		ServerName: name,
		RootCAs:    roots,
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	chains := conn.ConnectionState().VerifiedChains
	if len(chains) == 0 {
		return nil, errors.New("no verified chain")
	}
	return chains[0], nil
}

// checkLeaf fails the test unless leaf is for exactly name.
func checkLeaf(t *testing.T, leaf *x509.Certificate, name string) {
	t.Helper()
	if err := leaf.VerifyHostname(name); err != nil {
		t.Fatalf("leaf for %s: %v", name, err)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses) != 1 {
		t.Fatalf("leaf for %s has SANs %v %v, want exactly the one name", name, leaf.DNSNames, leaf.IPAddresses)
	}
}

// mustHandshake is handshake that fails the test on error, and checks the
// leaf names exactly name.
func (r *rig) mustHandshake(name string) []*x509.Certificate {
	r.t.Helper()
	chain, err := r.handshake(name)
	if err != nil {
		r.t.Fatalf("TLS handshake for %s: %v\npebble log:\n%s", name, err, r.pebble.Log())
	}
	checkLeaf(r.t, chain[0], name)
	return chain
}

func TestIssueOnFirstHandshake(t *testing.T) {
	for _, tc := range []struct {
		name     string
		certType string
		rsaBits  int
		check    func(t *testing.T, leaf *x509.Certificate)
	}{
		{"ecc", "ecc", 0, func(t *testing.T, leaf *x509.Certificate) {
			k, ok := leaf.PublicKey.(*ecdsa.PublicKey)
			if !ok || k.Curve != elliptic.P256() {
				t.Fatalf("key is %T, want ECDSA P-256", leaf.PublicKey)
			}
		}},
		{"rsa4096 default", "", 0, func(t *testing.T, leaf *x509.Certificate) {
			k, ok := leaf.PublicKey.(*rsa.PublicKey)
			if !ok || k.N.BitLen() != 4096 {
				t.Fatalf("key is %T, want RSA 4096 (Kong's default)", leaf.PublicKey)
			}
		}},
		{"rsa3072", "rsa", 3072, func(t *testing.T, leaf *x509.Certificate) {
			k, ok := leaf.PublicKey.(*rsa.PublicKey)
			if !ok || k.N.BitLen() != 3072 {
				t.Fatalf("key is %T, want RSA 3072", leaf.PublicKey)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testenv.PebbleOptions{})
			fields := map[string]any{"domains": []string{"shop.example.com"}, "cert_type": tc.certType}
			if tc.certType == "" {
				fields["cert_type"] = nil
			}
			if tc.rsaBits != 0 {
				fields["rsa_key_size"] = tc.rsaBits
			}
			app := r.load(r.config(r.acme(fields), nil))

			chain := r.mustHandshake("shop.example.com")
			tc.check(t, chain[0])
			if n := r.pebble.OrdersFor("shop.example.com"); n != 1 {
				t.Fatalf("orders for shop.example.com = %d, want 1", n)
			}

			// the second handshake is served from memory: no new order, and
			// it works with the certificate gone from storage
			if err := app.storage.Delete(t.Context(), "certificates"); err != nil {
				t.Fatal(err)
			}
			again := r.mustHandshake("shop.example.com")
			if !again[0].Equal(chain[0]) {
				t.Fatal("second handshake served another certificate")
			}
			if n := r.pebble.Orders(); n != 1 {
				t.Fatalf("orders after the second handshake = %d, want 1", n)
			}
		})
	}
}

// orderNames returns the identifiers of every order Pebble received.
func (r *rig) orderNames() []string {
	var names []string
	for _, o := range r.pebble.OrderList() {
		names = append(names, o.Identifiers...)
	}
	return names
}

// TestDisallowedNameFailsWithoutOrder puts the acme manager and Caddy's own
// ACME issuer, pointed at the same Pebble, in one TLS policy: a name the app
// does not allow must fail the handshake without the issuer ordering it.
func TestDisallowedNameFailsWithoutOrder(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	policy := map[string]any{
		"get_certificate": []any{map[string]any{"via": "acme"}},
		"issuers": []any{map[string]any{
			"module":                  "acme",
			"ca":                      r.pebble.DirectoryURL,
			"email":                   "fallthrough@example.com",
			"trusted_roots_pem_files": []string{r.pebble.ListenerCAFile},
			"challenges": map[string]any{
				"http":     map[string]any{"alternate_port": r.httpPort},
				"tls-alpn": map[string]any{"disabled": true},
			},
		}},
		"on_demand": true,
	}
	r.load(r.config(r.acme(map[string]any{"domains": []string{"allowed.example.com"}}), policy))

	for _, name := range []string{"denied.example.com", "allowed.example.com.evil.example", "example.com"} {
		if _, err := r.handshake(name); err == nil {
			t.Fatalf("handshake for %s succeeded, want it refused", name)
		}
	}
	if n := r.pebble.Orders(); n != 0 {
		t.Fatalf("disallowed names caused %d orders (%v), want none", n, r.orderNames())
	}

	// the allowed name is served by the app, in the same policy
	r.mustHandshake("allowed.example.com")
	if got := r.orderNames(); len(got) != 1 || got[0] != "allowed.example.com" {
		t.Fatalf("orders = %v, want one for allowed.example.com", got)
	}
}

// TestWildcardDomains checks `*.x` (any depth below, not the apex) and `x.*`
// (any TLD) on real handshakes.
func TestWildcardDomains(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	r.load(r.config(r.acme(map[string]any{"domains": []string{"*.wild.example.com", "brand.*"}}), nil))

	for _, name := range []string{"a.wild.example.com", "a.b.wild.example.com", "brand.example.org", "BRAND.example.net"} {
		t.Run("allowed/"+name, func(t *testing.T) {
			r.mustHandshake(strings.ToLower(name))
		})
	}
	for _, name := range []string{"wild.example.com", "badwild.example.com", "x.brand.example.org", "brandx.example.org"} {
		t.Run("refused/"+name, func(t *testing.T) {
			if _, err := r.handshake(name); err == nil {
				t.Fatalf("handshake for %s succeeded, want it refused", name)
			}
		})
	}
	want := map[string]bool{"a.wild.example.com": true, "a.b.wild.example.com": true, "brand.example.org": true, "brand.example.net": true}
	got := r.orderNames()
	if len(got) != len(want) {
		t.Fatalf("orders = %v, want one for each of %v", got, want)
	}
	for _, name := range got {
		if !want[name] {
			t.Fatalf("unexpected order for %s (orders %v)", name, got)
		}
	}
}

// TestIPv4 checks enable_ipv4_common_name on a handshake without SNI (the
// name is then the address the client connected to, 127.0.0.1).
func TestIPv4(t *testing.T) {
	t.Run("disabled", func(t *testing.T) {
		r := newRig(t, testenv.PebbleOptions{})
		r.load(r.config(r.acme(map[string]any{"allow_any_domain": true, "enable_ipv4_common_name": false}), nil))
		if _, err := r.handshake("127.0.0.1"); err == nil {
			t.Fatal("handshake for 127.0.0.1 succeeded with enable_ipv4_common_name false")
		}
		if n := r.pebble.Orders(); n != 0 {
			t.Fatalf("%d orders, want none", n)
		}
	})
	t.Run("enabled", func(t *testing.T) {
		r := newRig(t, testenv.PebbleOptions{})
		r.load(r.config(r.acme(map[string]any{"domains": []string{"127.0.0.1"}}), nil))
		chain, err := r.handshake("127.0.0.1")
		if err != nil {
			t.Fatalf("handshake for 127.0.0.1: %v\n%s", err, r.pebble.Log())
		}
		if ips := chain[0].IPAddresses; len(ips) != 1 || !ips[0].Equal(net.IPv4(127, 0, 0, 1)) || len(chain[0].DNSNames) != 0 {
			t.Fatalf("leaf SANs = %v %v, want the IP address only", chain[0].DNSNames, ips)
		}
		if n := r.pebble.OrdersFor("127.0.0.1"); n != 1 {
			t.Fatalf("orders for 127.0.0.1 = %d, want 1", n)
		}
	})
}

// TestRestartServesStoredCertificate: a new Caddy (new app, empty cache)
// with the same storage serves the stored certificate without ordering.
func TestRestartServesStoredCertificate(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	cfg := r.config(r.acme(map[string]any{"domains": []string{"persist.example.com"}}), nil)
	r.load(cfg)
	first := r.mustHandshake("persist.example.com")
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}

	r.load(cfg)
	second := r.mustHandshake("persist.example.com")
	if !second[0].Equal(first[0]) {
		t.Fatal("the restarted Caddy served another certificate")
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders = %d, want 1 (the restart must not order again)", n)
	}
}

// TestBackoffAfterFailedValidation points Pebble's HTTP-01 validation at a
// port nobody listens on: the order fails, a backoff is recorded in storage
// with the cause, and the next handshake places no order.
func TestBackoffAfterFailedValidation(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t)})
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{"fail.example.com"}, "fail_backoff_minutes": 10}), nil))

	if _, err := r.handshake("fail.example.com"); err == nil {
		t.Fatal("handshake succeeded although validation cannot")
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders after the failed attempt = %d, want 1", n)
	}
	data, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), "fail.example.com"))
	if err != nil {
		t.Fatalf("loading the backoff record: %v", err)
	}
	var b backoffRecord
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	if left := time.Until(b.Until); left < 9*time.Minute || left > 10*time.Minute {
		t.Fatalf("backoff ends in %s, want about 10m", left)
	}
	if b.Host != "fail.example.com" || b.Error == "" {
		t.Fatalf("backoff record = %+v, want the host and the cause", b)
	}

	if _, err := r.handshake("fail.example.com"); err == nil {
		t.Fatal("second handshake succeeded")
	}
	_, err = app.rt.Certificate(t.Context(), &tls.ClientHelloInfo{ServerName: "fail.example.com"})
	if err == nil || !strings.Contains(err.Error(), "because of previous failure; this is configurable with fail_backoff_minutes") {
		t.Fatalf("error during backoff = %v, want Kong's backoff message", err)
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("orders during the backoff = %d, want still 1", n)
	}
}

// backoffRecord is the JSON a node stores at issuance.BackoffKey after the
// CA refused an order (read by every node sharing the storage).
type backoffRecord struct {
	Host     string    `json:"host"`
	CA       string    `json:"ca"`
	FailedAt time.Time `json:"failed_at"`
	Until    time.Time `json:"until"`
	Error    string    `json:"error"`
}

// TestSuccessSetsNoBackoff: unlike Kong, a successful order leaves no
// backoff behind.
func TestSuccessSetsNoBackoff(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{"ok.example.com", "garbage.example.com", "expired.example.com"}}), nil))
	r.mustHandshake("ok.example.com")
	if _, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), "ok.example.com")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backoff after a successful order: %v, want none", err)
	}

	// backoff records written by someone else (unreadable) or expired do
	// not stop an order
	for name, record := range map[string]string{
		"garbage.example.com": "not json {",
		"expired.example.com": `{"host":"expired.example.com","failed_at":"2019-12-31T23:55:00Z","until":"2020-01-01T00:00:00Z","error":"old"}`,
	} {
		if err := app.storage.Store(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), name), []byte(record)); err != nil {
			t.Fatal(err)
		}
		r.mustHandshake(name)
	}
}

// TestEAB runs Pebble with external account binding required: the app
// registers with eab_kid/eab_hmac_key (the key given as a placeholder), and
// fails clearly without them. The HMAC key appears in no log line.
func TestEAB(t *testing.T) {
	hmacKey := base64.RawURLEncoding.EncodeToString([]byte("caddy-acme test EAB HMAC key 256"))
	r := newRig(t, testenv.PebbleOptions{EAB: map[string]string{"kid-1": hmacKey}})
	r.logFile = filepath.Join(t.TempDir(), "caddy.log")
	t.Setenv("CADDY_ACME_TEST_EAB_HMAC", hmacKey)

	t.Run("with binding", func(t *testing.T) {
		r.load(r.config(r.acme(map[string]any{
			"domains":      []string{"eab.example.com"},
			"eab_kid":      "kid-1",
			"eab_hmac_key": "{env.CADDY_ACME_TEST_EAB_HMAC}",
		}), nil))
		r.mustHandshake("eab.example.com")
	})
	t.Run("without binding", func(t *testing.T) {
		r.storage = t.TempDir() // a fresh node: no account registered yet
		app := r.load(r.config(r.acme(map[string]any{"domains": []string{"noeab.example.com"}}), nil))
		if _, err := r.handshake("noeab.example.com"); err == nil {
			t.Fatal("handshake succeeded without external account binding")
		}
		// an account error is not the name's fault: no backoff
		if _, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), "noeab.example.com")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("backoff record after an account error: %v, want none", err)
		}
	})
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	logs, err := os.ReadFile(r.logFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) == 0 {
		t.Fatal("no logs written")
	}
	if strings.Contains(string(logs), hmacKey) {
		t.Fatal("the EAB HMAC key appears in the logs")
	}
	if !strings.Contains(string(logs), "externalAccountRequired") {
		t.Fatal("the CA's externalAccountRequired problem is not in the logs of the order without binding")
	}
}

// TestPreferredChain: with alternate chains offered, preferred_chain picks
// the one whose root (the issuer of its last certificate) has that name.
func TestPreferredChain(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{AlternateRoots: 1})
	for i, name := range []string{"default.example.com", "alternate.example.com"} {
		fields := map[string]any{"domains": []string{name}}
		root := r.pebble.Root(t, 0)
		if i == 1 {
			root = r.pebble.Root(t, 1)
			fields["preferred_chain"] = root.Subject.CommonName
		}
		t.Run(name, func(t *testing.T) {
			r.load(r.config(r.acme(fields), nil))
			chain := r.mustHandshake(name)
			if got := chain[len(chain)-1]; !got.Equal(root) {
				t.Fatalf("chain ends at %q, want %q", got.Subject.CommonName, root.Subject.CommonName)
			}
		})
	}
	if r.pebble.Root(t, 0).Equal(r.pebble.Root(t, 1)) {
		t.Fatal("Pebble offered no alternate root")
	}
}

// TestChallengeFromStorage: the acme_challenge handler answers a challenge
// that another node started and only the shared storage knows; anything
// else goes to the next handler.
func TestChallengeFromStorage(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{"*.cluster.example.com"}}), nil))

	store := func(host, token string) string {
		keyAuth := token + ".thumbprint-of-the-other-node"
		data, err := json.Marshal(acme.Challenge{
			Type:             acme.ChallengeTypeHTTP01,
			Token:            token,
			KeyAuthorization: keyAuth,
			Identifier:       acme.Identifier{Type: "dns", Value: host},
		})
		if err != nil {
			t.Fatal(err)
		}
		// where certmagic's distributed solver keeps it (solvers.go)
		key := path.Join("acme", certmagic.StorageKeys.Safe(app.issuer.IssuerKey()), "challenge_tokens", certmagic.StorageKeys.Safe(host)+".json")
		if err := app.storage.Store(t.Context(), key, data); err != nil {
			t.Fatal(err)
		}
		return keyAuth
	}
	keyAuth := store("node2.cluster.example.com", "tok_EN-abc123")
	store("denied.example.org", "tok_denied")

	for _, tc := range []struct {
		name, host, path string
		status           int
		body             string
	}{
		{"stored token", "node2.cluster.example.com", "/.well-known/acme-challenge/tok_EN-abc123", 200, keyAuth},
		{"host with port", "node2.cluster.example.com:80", "/.well-known/acme-challenge/tok_EN-abc123", 200, keyAuth},
		{"unknown token", "node2.cluster.example.com", "/.well-known/acme-challenge/other", 418, "next"},
		{"unknown host", "node3.cluster.example.com", "/.well-known/acme-challenge/tok_EN-abc123", 418, "next"},
		{"disallowed host", "denied.example.org", "/.well-known/acme-challenge/tok_denied", 418, "next"},
		{"not a challenge", "node2.cluster.example.com", "/index.html", 418, "next"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(r.httpPort)+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tc.host
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || string(body) != tc.body {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tc.status, tc.body)
			}
		})
	}
}

// TestTermsOfService: any Let's Encrypt directory needs tos_accepted, in
// every form of its URL (Kong checks only the bare origins); loading does
// no network I/O, so an accepted config loads here without internet.
func TestTermsOfService(t *testing.T) {
	load := func(apiURI string, tos bool) error {
		return loadApp(t, map[string]any{
			"account_email": "ops@example.com",
			"api_uri":       apiURI,
			"tos_accepted":  tos,
			"domains":       []string{"example.com"},
		}, "")
	}
	for _, uri := range []string{
		"", // the default
		"https://acme-v02.api.letsencrypt.org",
		"https://acme-v02.api.letsencrypt.org/directory",
		"https://acme-staging-v02.api.letsencrypt.org/",
		"https://ACME-STAGING-V02.api.letsencrypt.org/directory",
	} {
		t.Run("refused "+uri, func(t *testing.T) {
			err := load(uri, false)
			if err == nil || !strings.Contains(err.Error(), "tos_accepted: terms of service must be accepted, see https://letsencrypt.org/repository/") {
				t.Fatalf("loading with %q and tos_accepted false: %v, want the terms of service error", uri, err)
			}
		})
		t.Run("accepted "+uri, func(t *testing.T) {
			if err := load(uri, true); err != nil {
				t.Fatalf("loading with %q and tos_accepted true: %v", uri, err)
			}
		})
	}
	t.Run("other CA", func(t *testing.T) {
		if err := load("https://ca.internal.example/acme/directory", false); err != nil {
			t.Fatalf("a CA other than Let's Encrypt needs no tos_accepted: %v", err)
		}
	})
}

// TestConcurrentHandshakesOneOrder: many clients asking for a new name at
// once share one order.
func TestConcurrentHandshakesOneOrder(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	r.load(r.config(r.acme(map[string]any{"domains": []string{"busy.example.com"}}), nil))

	const clients = 8
	errs := make(chan error, clients)
	for range clients {
		go func() {
			_, err := r.handshake("busy.example.com")
			errs <- err
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Errorf("handshake: %v", err)
		}
	}
	if n := r.pebble.Orders(); n != 1 {
		t.Fatalf("%d concurrent handshakes placed %d orders, want 1", clients, n)
	}
}
