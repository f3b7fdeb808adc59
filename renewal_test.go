package caddyacme

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestRenewalScan issues two short-lived certificates from Pebble, restarts
// Caddy (so neither is in memory), and checks that the scan leaves them
// alone until they are due — at half their lifetime, since 14 days is more
// than that — and then renews both: the one a handshake asks for again is
// served renewed, the other is renewed though nobody asked for it.
func TestRenewalScan(t *testing.T) {
	const lifetime = 20 * time.Second
	r := newRig(t, testenv.PebbleOptions{ValidityPeriod: lifetime})
	cfg := r.config(r.acme(map[string]any{"domains": []string{"*.renew.example.com"}}), nil)
	r.load(cfg)
	first := r.mustHandshake("a.renew.example.com")[0]
	r.mustHandshake("b.renew.example.com")
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	app := r.load(cfg)

	st, err := app.scanner.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Checked != 2 {
		t.Fatalf("scan checked %d certificates, want 2: %+v", st.Checked, st)
	}
	renewAt := st.Hosts["a.renew.example.com"].RenewAt
	if want := first.NotAfter.Add(-first.NotAfter.Sub(first.NotBefore) / 2); !renewAt.Equal(want) {
		t.Fatalf("renew at %s, want half-way through the certificate's life, %s", renewAt, want)
	}
	if time.Now().Before(renewAt) && st.Renewed != 0 {
		t.Fatalf("renewed %d certificates before they were due", st.Renewed)
	}

	time.Sleep(time.Until(renewAt.Add(time.Second)))
	st, err = app.scanner.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Renewed != 2 || st.Failed != 0 {
		t.Fatalf("second scan: %+v, want both renewed", st)
	}
	again := r.mustHandshake("a.renew.example.com")[0]
	if again.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("the handshake after renewal served the old certificate")
	}
	b, err := renewStore{app}.Cert(t.Context(), "b.renew.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if !b.NotAfter.After(first.NotAfter) {
		t.Fatalf("b.renew.example.com expires %s, not renewed", b.NotAfter)
	}
	if n := r.pebble.Orders(); n != 4 {
		t.Fatalf("orders = %d, want 4 (two issued, two renewed)", n)
	}
	if _, err := app.storage.Load(t.Context(), renewStatusKey); err != nil {
		t.Fatalf("scan status not in storage: %v", err)
	}
}

// TestRenewedElsewhereReachesCache: a certificate renewed by another node
// (here: renewed in storage without touching this node's memory) replaces
// the one this node serves at its next scan.
func TestRenewedElsewhereReachesCache(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{"shared.example.com"}}), nil))
	first := r.mustHandshake("shared.example.com")[0]

	if err := app.magic.RenewCertSync(t.Context(), "shared.example.com", true); err != nil {
		t.Fatal(err)
	}
	if still := r.mustHandshake("shared.example.com")[0]; !still.Equal(first) {
		t.Fatal("memory changed before the refresh (the test no longer shows anything)")
	}
	n, err := app.refreshFromStorage(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("refreshFromStorage = %d, %v; want 1 replaced", n, err)
	}
	if again := r.mustHandshake("shared.example.com")[0]; again.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("still serving the old certificate after the refresh")
	}
	if n, err := app.refreshFromStorage(t.Context()); err != nil || n != 0 {
		t.Fatalf("second refreshFromStorage = %d, %v; want nothing to do", n, err)
	}
}
