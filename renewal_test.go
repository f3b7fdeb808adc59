package caddyacme

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestRenewalScan issues three short-lived certificates from Pebble,
// restarts Caddy (so none is in memory), and checks that the scan leaves
// them alone until they are due — at half their lifetime, since 14 days is
// more than that — and then renews them: the one a handshake asks for again
// is served renewed, another is renewed though nobody asked for it, and the
// third, whose validation now fails (its DNS answers SERVFAIL), fails alone
// with its error in the scan status.
func TestRenewalScan(t *testing.T) {
	const lifetime = 20 * time.Second
	r := newRig(t, testenv.PebbleOptions{ValidityPeriod: lifetime})
	cfg := r.config(r.acme(map[string]any{
		"domains":     []string{"*.renew.example.com"},
		"disable_ari": true, // the threshold alone: Pebble's window for a 20s certificate is its whole life
	}), nil)
	r.load(cfg)
	first := r.mustHandshake("a.renew.example.com")[0]
	r.mustHandshake("b.renew.example.com")
	r.mustHandshake("c.renew.example.com")
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	app := r.load(cfg)

	st, err := app.rt.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Checked != 3 {
		t.Fatalf("scan checked %d certificates, want 3: %+v", st.Checked, st)
	}
	renewAt := st.Hosts["a.renew.example.com"].RenewAt
	if want := first.NotAfter.Add(-first.NotAfter.Sub(first.NotBefore) / 2); !renewAt.Equal(want) {
		t.Fatalf("renew at %s, want half-way through the certificate's life, %s", renewAt, want)
	}
	if time.Now().Before(renewAt) && st.Renewed != 0 {
		t.Fatalf("renewed %d certificates before they were due", st.Renewed)
	}

	r.pebble.SetServFail(t, "c.renew.example.com")
	time.Sleep(time.Until(st.Hosts["c.renew.example.com"].RenewAt.Add(time.Second)))
	st, err = app.rt.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Renewed != 2 || st.Failed != 1 {
		t.Fatalf("second scan: %+v, want a and b renewed, c failed", st)
	}
	if hs := st.Hosts["c.renew.example.com"]; hs.Renewed || !strings.Contains(hs.LastError, "urn:ietf:params:acme:error") {
		t.Fatalf("c.renew.example.com: %+v, want the CA's error", hs)
	}
	again := r.mustHandshake("a.renew.example.com")[0]
	if again.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("the handshake after renewal served the old certificate")
	}
	b, err := app.Certificate(t.Context(), "b.renew.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if !b.NotAfter.After(first.NotAfter) {
		t.Fatalf("b.renew.example.com expires %s, not renewed", b.NotAfter)
	}
	if n := r.pebble.Orders(); n != 6 {
		t.Fatalf("orders = %d, want 6 (three issued, three renewal attempts)", n)
	}
	info, err := app.Certificate(t.Context(), "c.renew.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info.LastRenewalError, "urn:ietf:params:acme:error") {
		t.Fatalf("GET /acme/certificates/c.renew.example.com: last_renewal_error %q", info.LastRenewalError)
	}
}

// TestARIRenewsEarly: the CA's ARI window decides when it opens before the
// threshold. Pebble is told that one certificate's window has passed (as
// after a revocation or an incident), so the scan renews it at once
// although it has months left — once the ARI stored at issuance is stale,
// as the CA's Retry-After says; another certificate of the same scan is
// left alone. With disable_ari the threshold alone decides.
func TestARIRenewsEarly(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	app := r.load(r.config(r.acme(map[string]any{"domains": []string{"*.ari.example.com"}}), nil))
	early := r.mustHandshake("early.ari.example.com")[0]
	r.mustHandshake("kept.ari.example.com")

	ctx := t.Context()
	certPEM, err := app.storage.Load(ctx, certmagic.StorageKeys.SiteCert(app.issuer.IssuerKey(), "early.ari.example.com"))
	if err != nil {
		t.Fatal(err)
	}
	r.pebble.SetRenewalInfo(t, certPEM, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))

	// the ARI stored at issuance stands until the CA's Retry-After passes
	st, err := app.rt.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Renewed != 0 || st.Checked != 2 {
		t.Fatalf("first scan %+v, want 2 checked and none renewed while the stored ARI is fresh", st)
	}
	kept := st.Hosts["kept.ari.example.com"]
	if kept.RenewAt.Before(time.Now()) || !kept.RenewAt.Before(kept.NotAfter.Add(-14*24*time.Hour)) {
		t.Fatalf("kept certificate renews at %s, want in its ARI window, before the 14-day threshold (expires %s)", kept.RenewAt, kept.NotAfter)
	}

	expireRetryAfter(t, app, "early.ari.example.com")
	st, err = app.rt.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hs := st.Hosts["early.ari.example.com"]; !hs.Renewed || !hs.RenewAt.Before(time.Now()) {
		t.Fatalf("certificate whose ARI window passed: %+v, want renewed at once", hs)
	}
	if hs := st.Hosts["kept.ari.example.com"]; hs.Renewed {
		t.Fatalf("kept certificate renewed: %+v", hs)
	}
	if got := r.mustHandshake("early.ari.example.com")[0]; got.SerialNumber.Cmp(early.SerialNumber) == 0 {
		t.Fatal("still serving the old certificate after the scan renewed it")
	}
	if n := r.pebble.Orders(); n != 3 {
		t.Fatalf("orders = %d, want 3 (two issued, one renewed)", n)
	}

	// the admin API reports the same renewal time, from the stored ARI
	info, err := app.Certificate(ctx, "kept.ari.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if !info.RenewAt.Equal(kept.RenewAt.UTC()) {
		t.Fatalf("GET /acme/certificates/kept.ari.example.com: renew_at %s, the scan said %s", info.RenewAt, kept.RenewAt)
	}

	// with disable_ari the threshold alone decides: nothing is due
	app = r.load(r.config(r.acme(map[string]any{"domains": []string{"*.ari.example.com"}, "disable_ari": true}), nil))
	st, err = app.rt.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Renewed != 0 || st.Due != 0 {
		t.Fatalf("scan with disable_ari: %+v, want nothing due", st)
	}
	if hs := st.Hosts["kept.ari.example.com"]; !hs.RenewAt.Equal(hs.NotAfter.Add(-14 * 24 * time.Hour)) {
		t.Fatalf("with disable_ari kept renews at %s, want 14 days before %s", hs.RenewAt, hs.NotAfter)
	}
}

// expireRetryAfter moves the Retry-After of the ARI stored with name's
// certificate into the past, as time would.
func expireRetryAfter(t *testing.T, app *App, name string) {
	t.Helper()
	key := certmagic.StorageKeys.SiteMeta(app.issuer.IssuerKey(), name)
	data, err := app.storage.Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		IssuerData struct {
			RenewalInfo map[string]any `json:"renewal_info"`
		} `json:"issuer_data"`
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		t.Fatal(err)
	}
	ari := meta.IssuerData.RenewalInfo
	if ari == nil {
		t.Fatalf("no ARI stored at issuance: %s", data)
	}
	var raw map[string]json.RawMessage
	var issuerData map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw["issuer_data"], &issuerData); err != nil {
		t.Fatal(err)
	}
	ari["_retryAfter"] = time.Now().Add(-time.Minute)
	issuerData["renewal_info"], _ = json.Marshal(ari)
	raw["issuer_data"], _ = json.Marshal(issuerData)
	data, _ = json.Marshal(raw)
	if err := app.storage.Store(t.Context(), key, data); err != nil {
		t.Fatal(err)
	}
}
