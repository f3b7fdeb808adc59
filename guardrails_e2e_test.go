package caddyacme

import (
	"crypto/tls"
	"errors"
	"io/fs"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/acmekit/caddy-acme/internal/appconfig"
	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
)

// The guard rails of orders seen from a running Caddy: a setting fixed or
// lowered by a config reload takes effect on the next handshake, and a
// name no public CA issues for is refused before any order when the CA is
// a public one (no trusted_roots).

// TestFixedAPIURITakesEffect: with api_uri pointing where nothing
// listens, a handshake fails without a backoff (the CA never refused the
// name) and without an order; once the config is reloaded with the right
// api_uri, the next handshake gets a certificate.
func TestFixedAPIURITakesEffect(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	const name = "fixed.example.com"
	wrong := "https://127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)) + "/dir"
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{name}, "api_uri": wrong}), nil))

	if _, err := r.handshake(name); err == nil {
		t.Fatal("handshake succeeded with api_uri pointing nowhere")
	}
	if _, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), name)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backoff record after an unreachable CA: %v, want none", err)
	}
	if n := r.pebble.Orders(); n != 0 {
		t.Fatalf("%d orders, want none", n)
	}

	app = r.load(r.config(r.acme(map[string]any{"domains": []string{name}}), nil))
	r.mustHandshake(name)
	if n := r.pebble.OrdersFor(name); n != 1 {
		t.Fatalf("%d orders for %s after the fix, want 1", n, name)
	}
	if _, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), name)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backoff record at the right CA: %v, want none", err)
	}
}

// TestLoweredFailBackoffTakesEffect: a name whose validation fails is in
// backoff (the next handshake places no order); reloaded with
// fail_backoff_minutes 0, the next handshake places a new order at once.
func TestLoweredFailBackoffTakesEffect(t *testing.T) {
	// Pebble validates on a port where nothing listens
	r := newRig(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t)})
	const name = "lowered.example.com"
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{name}, "fail_backoff_minutes": 10}), nil))

	if _, err := r.handshake(name); err == nil {
		t.Fatal("handshake succeeded although validation cannot")
	}
	if _, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), name)); err != nil {
		t.Fatalf("no backoff record after the failed validation: %v\npebble log:\n%s", err, r.pebble.Log())
	}
	if _, err := r.handshake(name); err == nil {
		t.Fatal("second handshake succeeded")
	}
	if n := r.pebble.OrdersFor(name); n != 1 {
		t.Fatalf("%d orders during the backoff, want 1", n)
	}

	r.load(r.config(r.acme(map[string]any{"domains": []string{name}, "fail_backoff_minutes": 0}), nil))
	if _, err := r.handshake(name); err == nil {
		t.Fatal("handshake succeeded although validation cannot")
	}
	if n := r.pebble.OrdersFor(name); n != 2 {
		t.Fatalf("%d orders after fail_backoff_minutes 0, want 2 (a new order at once)", n)
	}
}

// TestChangedAPIURIStartsClean: backoff records are kept per CA, so a name
// in backoff at one directory is ordered at once from another (here the
// same Pebble reached as localhost instead of 127.0.0.1: another
// directory URL, another issuer key).
func TestChangedAPIURIStartsClean(t *testing.T) {
	// Pebble validates on a port where nothing listens
	r := newRig(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t)})
	const name = "moved.example.com"
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{name}, "fail_backoff_minutes": 10}), nil))
	if _, err := r.handshake(name); err == nil {
		t.Fatal("handshake succeeded although validation cannot")
	}
	if _, err := app.storage.Load(t.Context(), issuance.BackoffKey(app.issuer.IssuerKey(), name)); err != nil {
		t.Fatalf("no backoff record after the failed validation: %v", err)
	}
	if _, err := r.handshake(name); err == nil || r.pebble.OrdersFor(name) != 1 {
		t.Fatalf("during the backoff: handshake error %v, %d orders; want refused, 1 order", err, r.pebble.OrdersFor(name))
	}

	other := strings.Replace(r.pebble.DirectoryURL, "127.0.0.1", "localhost", 1)
	if other == r.pebble.DirectoryURL {
		t.Fatalf("directory %s has no 127.0.0.1 to replace", other)
	}
	moved := r.load(r.config(r.acme(map[string]any{"domains": []string{name}, "fail_backoff_minutes": 10, "api_uri": other}), nil))
	if moved.issuer.IssuerKey() == app.issuer.IssuerKey() {
		t.Fatalf("the issuer key did not change with api_uri (%s)", moved.issuer.IssuerKey())
	}
	if _, err := r.handshake(name); err == nil {
		t.Fatal("handshake succeeded although validation cannot")
	}
	if n := r.pebble.OrdersFor(name); n != 2 {
		t.Fatalf("%d orders after api_uri changed, want 2: the old CA's backoff must not apply", n)
	}
}

// notPublic are names no public CA issues a certificate for, all on
// loopback or never resolved. They are asked for as Caddy's TLS app asks
// the acme manager (the ClientHello's name), so that 127.0.0.2 and ::1
// need no listener of their own.
var notPublic = []string{"intranet", "foo.localhost", "printer.local", "db.internal", "127.0.0.1", "127.0.0.2", "::1", "255.255.255.255"}

// TestPublicCARefusesLocalNames: without trusted_roots (a public CA), a
// handshake for a local name or non-public address is refused before any
// order, even with allow_any_domain; so is POST /acme, with 400 naming the
// rule. With trusted_roots (a private CA), such names are ordered and
// served.
func TestPublicCARefusesLocalNames(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})

	t.Run("public CA", func(t *testing.T) {
		// enable_ipv6, so that ::1 meets the public-CA rule (not the IPv6 one)
		cfg, base := withAdmin(t, r.config(r.acme(map[string]any{"allow_any_domain": true, "trusted_roots": nil, "enable_ipv6": true}), nil))
		app := r.load(cfg)
		for _, name := range notPublic {
			// what Caddy's TLS app asks the acme manager for
			_, err := app.rt.Certificate(t.Context(), &tls.ClientHelloInfo{ServerName: name})
			if !errors.Is(err, appconfig.ErrNotPublic) {
				t.Errorf("%s: %v, want the public-CA rule's refusal", name, err)
			}
		}
		// and real handshakes: with SNI, and without (127.0.0.1, the
		// address connected to)
		for _, name := range []string{"intranet", "foo.localhost", "printer.local", "db.internal", "127.0.0.1"} {
			if _, err := r.handshake(name); err == nil {
				t.Errorf("handshake for %s succeeded", name)
			}
		}
		for _, name := range []string{"foo.localhost", "127.0.0.1"} {
			status, body := call(t, "POST", base+"/acme", "application/json", `{"host":"`+name+`"}`)
			if status != 400 || !strings.Contains(body, "a public CA does not issue certificates for this name") || !strings.Contains(body, "trusted_roots") {
				t.Errorf("POST /acme %s: %d %s, want 400 naming the public-CA rule", name, status, body)
			}
		}
		if n := r.pebble.Orders(); n != 0 {
			t.Fatalf("%d orders (%v), want none", n, r.orderNames())
		}
	})

	t.Run("private CA", func(t *testing.T) {
		r.load(r.config(r.acme(map[string]any{"allow_any_domain": true}), nil))
		r.mustHandshake("foo.localhost")
		chain, err := r.handshake("127.0.0.1")
		if err != nil {
			t.Fatalf("handshake for 127.0.0.1: %v\n%s", err, r.pebble.Log())
		}
		if ips := chain[0].IPAddresses; len(ips) != 1 || !ips[0].Equal(net.IPv4(127, 0, 0, 1)) || len(chain[0].DNSNames) != 0 {
			t.Fatalf("leaf SANs = %v %v, want the IP address only", chain[0].DNSNames, ips)
		}
		for _, name := range []string{"foo.localhost", "127.0.0.1"} {
			if n := r.pebble.OrdersFor(name); n != 1 {
				t.Errorf("%d orders for %s, want 1", n, name)
			}
		}
	})
}
