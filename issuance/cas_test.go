package issuance

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

// TestUsableCAs: an order of a name goes to the CAs not paused on this
// node and where the name is not backed off, in order; with none, the
// error names each CA's reason, and errors.As finds the backoff and the
// pause; the certmagic configuration of an order has only the usable
// CAs' issuers. The records of the CAs not paused are read in one batch
// (each CA's two rate limits and backoff), none of a paused CA's.
func TestUsableCAs(t *testing.T) {
	fallback := certmagic.NewACMEIssuer(&certmagic.Config{}, certmagic.ACMEIssuer{CA: "https://127.0.0.1:2/fallback"})
	storage := manyLoadCounter{&loadCounter{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}}
	r := buildRuntime(t, noCA, storage, Options{Fallback: []Issuer{fallback}, FailBackoff: 10 * time.Minute})
	reads := func(what string, want ...string) {
		t.Helper()
		loads, batches := storage.taken()
		if len(loads) != 0 || len(batches) != 1 || !slices.Equal(batches[0], want) {
			t.Fatalf("%s: Loads %q, batches %q; want one batch %q", what, loads, batches, want)
		}
	}
	r.magic.Issuers = append(r.magic.Issuers, fallback)
	primary, second := r.cas[0], r.cas[1]
	if second.key != fallback.IssuerKey() || primary.key != r.caKey() {
		t.Fatalf("CAs %q, %q; want the primary then the fallback", primary.key, second.key)
	}
	const name = "a.example.com"
	keys := func(cas []*caState) (out []string) {
		for _, c := range cas {
			out = append(out, c.key)
		}
		return out
	}

	records := func(c *caState) []string {
		return []string{RateLimitKey(c.key, rateLimitAccount), RateLimitKey(c.key, "example.com"), BackoffKey(c.key, name)}
	}

	usable, err := r.usableCAs(t.Context(), name, true)
	if err != nil || len(usable) != 2 || r.magicFor(usable) != r.magic {
		t.Fatalf("usable = %v, %v; want both, and the app's own configuration", keys(usable), err)
	}
	reads("both CAs", append(records(primary), records(second)...)...)
	if _, err := r.usableCAs(t.Context(), name, false); err != nil {
		t.Fatal(err)
	}
	reads("without rate limits", BackoffKey(primary.key, name), BackoffKey(second.key, name))

	// a rate limit of the primary for the name's domain
	r.setRateLimit(primary, name, &acme.Problem{Detail: `too many certificates for "example.com"`}, time.Now().Add(time.Hour))
	usable, err = r.usableCAs(t.Context(), name, true)
	if err != nil || len(usable) != 1 || usable[0] != second {
		t.Fatalf("with the primary rate limited: usable = %v, %v; want the fallback", keys(usable), err)
	}
	reads("a rate limit", append(records(primary), records(second)...)...)
	if err := storage.Delete(t.Context(), RateLimitKey(primary.key, "example.com")); err != nil {
		t.Fatal(err)
	}

	r.caUnreachable(primary, name, errors.New("connection refused"))
	usable, err = r.usableCAs(t.Context(), name, true)
	if err != nil || len(usable) != 1 || usable[0] != second {
		t.Fatalf("with the primary paused: usable = %v, %v; want the fallback", keys(usable), err)
	}
	reads("the primary paused", records(second)...)
	m := r.magicFor(usable)
	if len(m.Issuers) != 1 || m.Issuers[0].IssuerKey() != second.key || len(r.magic.Issuers) != 2 {
		t.Fatalf("order configuration issuers = %d (app's %d); want the fallback's only", len(m.Issuers), len(r.magic.Issuers))
	}

	r.setBackoff(second, name, "the CA could not validate a.example.com")
	_, err = r.usableCAs(t.Context(), name, true)
	if _, ok := errors.AsType[BackoffError](err); !ok {
		t.Fatalf("both unusable: %v, want a BackoffError inside", err)
	}
	if _, ok := errors.AsType[PauseError](err); !ok {
		t.Fatalf("both unusable: %v, want a PauseError inside", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "no CA may be asked now") || !strings.Contains(msg, primary.key) || !strings.Contains(msg, "fail_backoff_minutes") {
		t.Fatalf("error %q, want each CA's reason", msg)
	}
	// another name is not backed off at the fallback
	if usable, err := r.usableCAs(t.Context(), "b.example.com", true); err != nil || len(usable) != 1 || usable[0] != second {
		t.Fatalf("another name: usable = %v, %v; want the fallback", keys(usable), err)
	}
	r.caAnswered(primary)
	if usable, err := r.usableCAs(t.Context(), name, true); err != nil || len(usable) != 1 || usable[0] != primary {
		t.Fatalf("primary answering again, name backed off at the fallback: usable = %v, %v; want the primary", keys(usable), err)
	}
}

// TestAfterOrderPerCA: each CA's verdict on one order acts on that CA
// only: the primary refused (backoff there), the fallback issued (no
// backoff, its pause ends); an unreachable CA that did not issue is
// paused.
func TestAfterOrderPerCA(t *testing.T) {
	fallback := certmagic.NewACMEIssuer(&certmagic.Config{}, certmagic.ACMEIssuer{CA: "https://127.0.0.1:2/fallback"})
	r := buildRuntime(t, noCA, nil, Options{Fallback: []Issuer{fallback}, FailBackoff: 10 * time.Minute})
	primary, second := r.cas[0], r.cas[1]
	const name = "a.example.com"
	r.caUnreachable(second, "x.example.com", errors.New("earlier outage"))
	r.afterOrder(name, watched{cas: []caWatched{
		{ca: primary.key, refused: true, reason: "the CA could not validate a.example.com"},
		{ca: second.key},
	}}, nil, true)
	if err := r.checkBackoff(t.Context(), primary, name); err == nil {
		t.Fatal("no backoff at the primary, which refused")
	}
	if err := r.checkBackoff(t.Context(), second, name); err != nil {
		t.Fatalf("backoff at the fallback, which issued: %v", err)
	}
	if err := second.pause.check(second.key); err != nil {
		t.Fatalf("the fallback issued but stays paused: %v", err)
	}
	r.afterOrder("b.example.com", watched{cas: []caWatched{
		{ca: primary.key, unreachable: errors.New("connection refused")},
		{ca: second.key},
	}}, nil, true)
	if err := primary.pause.check(primary.key); err == nil {
		t.Fatal("the unreachable primary is not paused")
	}
}

// caKey is the primary CA's part of the storage keys of backoffs and
// pauses (each CA has its own, caState.key): the issuer key of the
// configured directory, so that changing api_uri starts clean.
func (r *Runtime) caKey() string { return r.cas[0].key }
