package caddyacme

import (
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// The tests in this file check how api_uri becomes the CA's directory
// (internal/directory.URL) against real CAs.

// TestAPIURIBareOriginWithoutDirectory: a bare origin given as api_uri
// gets /directory appended (as Kong does); Caddy's acme_server, whose
// directory is /acme/<name>/directory, answers that URL with an empty 200.
// The order fails saying which URL to give, not with acmez's "response
// Content-Type is  but target container is not io.Writer", and the CA
// sees no order; the next order meets the node's pause, which says so too.
func TestAPIURIBareOriginWithoutDirectory(t *testing.T) {
	r := newCaddyCARig(t, testenv.CaddyCAOptions{})
	const host = "origin.caddyca.example"
	r.point(host)
	dir, err := url.Parse(r.ca.Directory)
	if err != nil {
		t.Fatal(err)
	}
	origin := dir.Scheme + "://" + dir.Host
	cfg, base := withAdmin(t, r.config(r.acme(map[string]any{"api_uri": origin, "domains": []string{host}}), nil))
	r.load(cfg)

	want := "api_uri: the CA did not answer with an ACME directory at " + origin + "/directory (HTTP 200 with an empty body); " +
		"give the directory URL, e.g. " + origin + "/acme/<name>/directory"
	for i, status := range []int{500, 503} { // the order, then the pause it started
		msg := apiError(t, mustCall(t, "POST", base+"/acme", "application/json", `{"host":"`+host+`"}`, status))
		if !strings.Contains(msg, want) {
			t.Fatalf("POST /acme #%d: %q\nwant it to contain %q", i+1, msg, want)
		}
		if strings.Contains(msg, "io.Writer") {
			t.Fatalf("POST /acme #%d: %q still has acmez's message", i+1, msg)
		}
	}
	if _, err := r.handshake(host); err == nil {
		t.Fatal("a handshake succeeded without a directory")
	}
	if n := r.ca.Orders(); n != 0 {
		t.Fatalf("the CA got %d orders, want none", n)
	}
}

// apiError returns the error of a Caddy admin API error body.
func apiError(t *testing.T, body string) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		t.Fatalf("admin API error body %q: %v", body, err)
	}
	return e.Error
}

// TestAPIURITrailingSlash: api_uri with and without a trailing slash is
// one CA: certmagic's issuer key (the storage key of the account and of
// the certificates) is the same for both, and both spellings reach
// Pebble's directory and order. A certificate ordered with one spelling
// is served with the other, without a new order.
func TestAPIURITrailingSlash(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	const first, second = "slash.example.com", "noslash.example.com"
	domains := []string{first, second}
	if strings.HasSuffix(r.pebble.DirectoryURL, "/") {
		t.Fatalf("Pebble's directory %s ends in a slash", r.pebble.DirectoryURL)
	}

	r.load(r.config(r.acme(map[string]any{"api_uri": r.pebble.DirectoryURL + "/", "domains": domains}), nil))
	one := r.mustHandshake(first)
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}

	r.load(r.config(r.acme(map[string]any{"api_uri": r.pebble.DirectoryURL, "domains": domains}), nil))
	again := r.mustHandshake(first)
	if !again[0].Equal(one[0]) {
		t.Fatal("without the trailing slash, the certificate ordered with it was not served")
	}
	r.mustHandshake(second)
	if n := r.pebble.Orders(); n != 2 {
		t.Fatalf("Pebble got %d orders, want 2 (one per name)", n)
	}

	// one issuer key holds both certificates and the one account
	for _, dir := range []string{"certificates", "acme"} {
		keys, err := os.ReadDir(filepath.Join(r.storage, dir))
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 {
			t.Fatalf("%s/ holds %d issuer keys, want 1: %v", dir, len(keys), keys)
		}
		if dir != "certificates" {
			continue
		}
		for _, name := range domains {
			if _, err := os.Stat(filepath.Join(r.storage, dir, keys[0].Name(), name, name+".crt")); err != nil {
				t.Fatalf("certificate of %s: %v", name, err)
			}
		}
	}
}
