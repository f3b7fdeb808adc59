package caddyacme

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestKongAdapterEndToEnd migrates a Kong declarative file whose acme
// plugin points at a real Pebble: `caddy adapt --adapter kong` and
// `caddy validate --adapter kong` through the real CLI (this test binary
// re-executed as caddy), then the adapted config runs in this process
// and the first TLS handshake for an allowed name gets a certificate
// from Pebble, validated over HTTP-01 against the adapted HTTP server.
// Only what Kong has no field for is set after adapting: the rig's
// loopback ports and Pebble's trusted root.
func TestKongAdapterEndToEnd(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	dir := t.TempDir()
	kongFile := filepath.Join(dir, "kong.yml")
	kongYAML := fmt.Sprintf(`_format_version: "3.0"
services:
- name: shop
  url: http://127.0.0.1:9
  routes:
  - name: shop
    hosts: [shop.kong.example.com]
plugins:
- name: acme
  config:
    account_email: ops@example.com
    api_uri: %s
    domains:
    - "*.kong.example.com"
    cert_type: ecc
    fail_backoff_minutes: 1
    storage: shm
- name: prometheus
`, r.pebble.DirectoryURL)
	if err := os.WriteFile(kongFile, []byte(kongYAML), 0o600); err != nil {
		t.Fatal(err)
	}

	// the real CLI adapts (and validates) it, warning about what differs
	stdout, stderr := kongCLI(t, "adapt", "--adapter", "kong", "--config", kongFile, "--validate")
	for _, want := range []string{"storage shm", "ignored, as this adapter migrates the acme plugin", "prometheus"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("caddy adapt: no warning containing %q in:\n%s", want, stderr)
		}
	}
	inProcess, _, err := caddyconfig.GetAdapter("kong").Adapt([]byte(kongYAML), map[string]any{"filename": kongFile})
	if err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(t, []byte(stdout), inProcess) {
		t.Fatalf("caddy adapt printed another config than the adapter gives in process:\n%s\nvs\n%s", stdout, inProcess)
	}
	// caddy run loads --adapter configs the same way caddy validate does
	kongCLI(t, "validate", "--adapter", "kong", "--config", kongFile)

	// the rig's ports and Pebble's root, which Kong has no fields for
	var cfg map[string]any
	if err := json.Unmarshal([]byte(stdout), &cfg); err != nil {
		t.Fatal(err)
	}
	apps := cfg["apps"].(map[string]any)
	acmeApp := apps["acme"].(map[string]any)
	if acmeApp["api_uri"] != r.pebble.DirectoryURL || acmeApp["cert_type"] != "ecc" {
		t.Fatalf("adapted acme app = %v", acmeApp)
	}
	acmeApp["trusted_roots"] = []string{r.pebble.ListenerCAFile}
	acmeApp["http_port"] = r.httpPort
	acmeApp["issue_timeout"] = "60s"
	httpApp := apps["http"].(map[string]any)
	httpApp["http_port"], httpApp["https_port"] = r.httpPort, r.httpsPort
	servers := httpApp["servers"].(map[string]any)
	servers["https"].(map[string]any)["listen"] = []string{"127.0.0.1:" + strconv.Itoa(r.httpsPort)}
	servers["http"].(map[string]any)["listen"] = []string{"127.0.0.1:" + strconv.Itoa(r.httpPort)}
	cfg["admin"] = map[string]any{"disabled": true}
	cfg["storage"] = map[string]any{"module": "file_system", "root": r.storage}
	cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": "WARN"}}}
	loaded, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.load(loaded)

	chain := r.mustHandshake("shop.kong.example.com")
	if n := r.pebble.OrdersFor("shop.kong.example.com"); n != 1 {
		t.Fatalf("orders for shop.kong.example.com = %d, want 1", n)
	}
	if _, err := r.handshake("kong.example.com"); err == nil {
		t.Fatal("handshake for kong.example.com succeeded: *.kong.example.com does not cover the apex (Kong)")
	}

	// the adapted site: HTTPS answers as Kong does without routes, HTTP
	// redirects to HTTPS
	client := &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{ServerName: "shop.kong.example.com", RootCAs: r.pebble.RootPool(t)},
		},
	}
	req, _ := http.NewRequest(http.MethodGet, "https://127.0.0.1:"+strconv.Itoa(r.httpsPort)+"/", nil)
	req.Host = "shop.kong.example.com"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || string(body) != `{"message":"no Route matched with those values"}` {
		t.Errorf("HTTPS answer = %d %q", resp.StatusCode, body)
	}
	if !resp.TLS.PeerCertificates[0].Equal(chain[0]) {
		t.Error("HTTPS server presents another certificate than the handshake got")
	}
	req, _ = http.NewRequest(http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(r.httpPort)+"/path?q=1", nil)
	req.Host = "shop.kong.example.com"
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusPermanentRedirect || loc != "https://shop.kong.example.com/path?q=1" {
		t.Errorf("HTTP answer = %d, Location %q", resp.StatusCode, loc)
	}
}

// kongCLI runs the caddy command (this test binary re-executed as
// caddy's main) and returns its standard output and error.
func kongCLI(t *testing.T, args ...string) (string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("caddy %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, a)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}
