package issuance

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acmekit/caddy-acme/internal/allowlist"
)

// storedDomains is the record at DomainsKey (nil: none).
func storedDomains(t *testing.T, s certmagic.Storage) []byte {
	t.Helper()
	if !s.Exists(t.Context(), DomainsKey) {
		return nil
	}
	data, err := s.Load(t.Context(), DomainsKey)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// checkListed fails the test unless r's matcher allows exactly the names
// in listed among names.
func checkListed(t *testing.T, r *testRuntime, names []string, listed ...string) {
	t.Helper()
	for _, name := range names {
		if got, want := r.domainListed(name), slices.Contains(listed, name); got != want {
			t.Errorf("domainListed(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestDomainsAddListRemove: entries are normalised as the domains field's
// (case, trailing dot, IDN to punycode), kept once, listed sorted, stored
// as one JSON record, matched at once on this node (exact names and
// wildcards, not a wildcard's apex), and removed by any spelling of the
// entry; removing an absent entry is ErrDomainNotFound.
func TestDomainsAddListRemove(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	r := newTestRuntime(t, noCA, storage, Options{})
	names := []string{"shop.example.org", "a.tenant.example.net", "a.b.tenant.example.net", "tenant.example.net", "xn--bcher-kva.example", "other.example"}

	list, err := r.Domains(t.Context())
	if err != nil || list == nil || len(list) != 0 {
		t.Fatalf("Domains before any add = %#v, %v; want [] and no error", list, err)
	}

	list, err = r.AddDomains(t.Context(), []string{"Shop.Example.ORG.", "*.tenant.example.net", "bücher.example", "shop.example.org"})
	want := []string{"*.tenant.example.net", "shop.example.org", "xn--bcher-kva.example"}
	if err != nil || !slices.Equal(list, want) {
		t.Fatalf("AddDomains = %q, %v; want %q", list, err, want)
	}
	checkListed(t, r, names, "shop.example.org", "a.tenant.example.net", "a.b.tenant.example.net", "xn--bcher-kva.example")
	var rec domainsRecord
	if err := json.Unmarshal(storedDomains(t, storage), &rec); err != nil || !slices.Equal(rec.Domains, want) {
		t.Fatalf("stored record %s (%v), want the domains %q", storedDomains(t, storage), err, want)
	}

	// idempotent: the same entries again change nothing
	before := storedDomains(t, storage)
	if list, err = r.AddDomains(t.Context(), []string{"*.TENANT.example.net"}); err != nil || !slices.Equal(list, want) {
		t.Fatalf("adding a listed entry again = %q, %v; want %q", list, err, want)
	}
	if got := storedDomains(t, storage); string(got) != string(before) {
		t.Fatalf("adding a listed entry rewrote the record: %s", got)
	}
	if list, err = r.Domains(t.Context()); err != nil || !slices.Equal(list, want) {
		t.Fatalf("Domains = %q, %v; want %q", list, err, want)
	}

	if err := r.RemoveDomain(t.Context(), "*.Tenant.Example.Net."); err != nil {
		t.Fatal(err)
	}
	checkListed(t, r, names, "shop.example.org", "xn--bcher-kva.example")
	err = r.RemoveDomain(t.Context(), "*.tenant.example.net")
	if !errors.Is(err, ErrDomainNotFound) || !strings.Contains(err.Error(), "*.tenant.example.net") {
		t.Fatalf("removing an absent entry: %v, want ErrDomainNotFound naming it", err)
	}
	if err := r.RemoveDomain(t.Context(), "a.*.example"); !errors.Is(err, ErrInvalidDomain) {
		t.Fatalf("removing an invalid entry: %v, want ErrInvalidDomain", err)
	}
	for _, e := range []string{"shop.example.org", "bücher.example"} {
		if err := r.RemoveDomain(t.Context(), e); err != nil {
			t.Fatalf("removing %s: %v", e, err)
		}
	}
	checkListed(t, r, names)
	if list, err = r.Domains(t.Context()); err != nil || list == nil || len(list) != 0 {
		t.Fatalf("Domains after removing all = %#v, %v; want []", list, err)
	}
}

// TestDomainsInvalidStoresNothing: one bad entry among good ones fails the
// whole add with ErrInvalidDomain naming the entry and the reason, and
// neither storage nor the node's matcher changes.
func TestDomainsInvalidStoresNothing(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	r := newTestRuntime(t, noCA, storage, Options{})
	if _, err := r.AddDomains(t.Context(), []string{"kept.example"}); err != nil {
		t.Fatal(err)
	}
	before := storedDomains(t, storage)
	for _, tc := range []struct {
		bad, why string
	}{
		{"a.*.example.com", "invalid wildcard"},
		{"shop.example.org:443", "port"},
		{"", "empty"},
		{"*", "wildcard"},
		{"under_score.example", "invalid character"},
		{"[::1]:443", "port"},
		{"fe80::1%eth0", "zone"},
		{"x." + strings.Repeat("a", 64) + ".example", "63"},
	} {
		_, err := r.AddDomains(t.Context(), []string{"good.example", tc.bad, "good2.example"})
		if !errors.Is(err, ErrInvalidDomain) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.bad)) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("adding %q: %v, want ErrInvalidDomain naming it and %q", tc.bad, err, tc.why)
		}
	}
	if got := storedDomains(t, storage); string(got) != string(before) {
		t.Fatalf("a refused add changed the record: %s, was %s", got, before)
	}
	checkListed(t, r, []string{"kept.example", "good.example", "good2.example"}, "kept.example")
}

// TestDomainsMax: the list holds at most MaxDomains entries; an add past
// it is ErrTooManyDomains and stores nothing, an add of listed entries
// still succeeds.
func TestDomainsMax(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	r := newTestRuntime(t, noCA, storage, Options{})
	entries := make([]string, MaxDomains-1)
	for i := range entries {
		entries[i] = fmt.Sprintf("h%d.example.com", i)
	}
	if list, err := r.AddDomains(t.Context(), entries); err != nil || len(list) != MaxDomains-1 {
		t.Fatalf("adding %d entries: %d listed, %v", len(entries), len(list), err)
	}
	if list, err := r.AddDomains(t.Context(), []string{"last.example.com", "h0.example.com"}); err != nil || len(list) != MaxDomains {
		t.Fatalf("adding the last entry: %d listed, %v", len(list), err)
	}
	before := storedDomains(t, storage)
	_, err := r.AddDomains(t.Context(), []string{"h1.example.com", "one-too-many.example.com"})
	if !errors.Is(err, ErrTooManyDomains) || !strings.Contains(err.Error(), "100000") {
		t.Fatalf("adding past the limit: %v, want ErrTooManyDomains naming it", err)
	}
	if got := storedDomains(t, storage); string(got) != string(before) {
		t.Fatal("an add past the limit changed the record")
	}
	if r.domainListed("one-too-many.example.com") || !r.domainListed("last.example.com") {
		t.Fatal("the matcher changed with a refused add")
	}
	if _, err := r.AddDomains(t.Context(), []string{"h5.example.com"}); err != nil {
		t.Fatalf("adding a listed entry at the limit: %v", err)
	}
}

// TestDomainsConcurrentNodes: two nodes sharing a storage add entries at
// once; the storage lock keeps every one.
func TestDomainsConcurrentNodes(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	nodes := []*testRuntime{
		newTestRuntime(t, noCA, storage, Options{Node: "a"}),
		newTestRuntime(t, noCA, storage, Options{Node: "b"}),
	}
	const perNode = 6
	var wg sync.WaitGroup
	for n, r := range nodes {
		for i := range perNode {
			wg.Go(func() {
				if _, err := r.AddDomains(t.Context(), []string{fmt.Sprintf("n%d-%d.example.com", n, i)}); err != nil {
					t.Errorf("node %d adding entry %d: %v", n, i, err)
				}
			})
		}
	}
	wg.Wait()
	list, err := nodes[0].Domains(t.Context())
	if err != nil || len(list) != 2*perNode {
		t.Fatalf("after concurrent adds: %d entries (%q), %v; want %d", len(list), list, err, 2*perNode)
	}
}

// TestDomainsSyncAndRestart: an entry added on node A is matched by node B
// within B's cache_sync_interval, without a handshake or an API call on B,
// and stops matching there when A removes it; a node started later (a
// restart or config reload) matches the stored list as soon as Start
// returns.
func TestDomainsSyncAndRestart(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	const interval = 200 * time.Millisecond
	a := newTestRuntime(t, noCA, storage, Options{CacheSyncInterval: interval})
	b := newTestRuntime(t, noCA, storage, Options{CacheSyncInterval: interval})
	const name = "x.customer.example"

	if _, err := a.AddDomains(t.Context(), []string{"*.customer.example"}); err != nil {
		t.Fatal(err)
	}
	if !a.domainListed(name) {
		t.Fatal("node A does not match its own entry at once")
	}
	waitListed(t, b, name, true, 5*interval)

	later := newTestRuntime(t, noCA, storage, Options{CacheSyncInterval: time.Hour})
	if !later.domainListed(name) {
		t.Fatal("a node started after the add does not match the stored entry")
	}

	if err := a.RemoveDomain(t.Context(), "*.customer.example"); err != nil {
		t.Fatal(err)
	}
	if a.domainListed(name) {
		t.Fatal("node A still matches its removed entry")
	}
	waitListed(t, b, name, false, 5*interval)

	// the record deleted from storage (not through the API): an empty list
	if _, err := a.AddDomains(t.Context(), []string{name}); err != nil {
		t.Fatal(err)
	}
	waitListed(t, b, name, true, 5*interval)
	if err := storage.Delete(t.Context(), DomainsKey); err != nil {
		t.Fatal(err)
	}
	waitListed(t, b, name, false, 5*interval)
}

// waitListed waits up to within for r.domainListed(name) to be want.
func waitListed(t *testing.T, r *testRuntime, name string, want bool, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for r.domainListed(name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("domainListed(%q) still %v after %v", name, !want, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDomainsUnreadableRecord: a record that someone else wrote and that
// does not parse (not JSON, or an invalid entry) is logged once, each node
// keeps the last list it read, and reads and changes fail with
// ErrDomainsUnreadable without overwriting it. Once fixed it applies again.
func TestDomainsUnreadableRecord(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	const interval = 100 * time.Millisecond
	a := newTestRuntime(t, noCA, storage, Options{})
	b := buildRuntime(t, noCA, storage, Options{CacheSyncInterval: interval})
	core, logs := observer.New(zapcore.ErrorLevel)
	b.logger = zap.New(core)
	b.Start()
	if _, err := a.AddDomains(t.Context(), []string{"good.example"}); err != nil {
		t.Fatal(err)
	}
	waitListed(t, b, "good.example", true, 10*interval)

	for _, bad := range []string{`{"domains": [`, `{"domains": ["a.*.example"]}`, `{"domains": "good.example"}`, ``} {
		logs.TakeAll()
		if err := storage.Store(t.Context(), DomainsKey, []byte(bad)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * interval)
		if n := logs.FilterMessageSnippet("does not parse").Len(); n != 1 {
			t.Errorf("record %q: logged %d times in 5 sync intervals, want once", bad, n)
		}
		if !b.domainListed("good.example") {
			t.Errorf("record %q: node B dropped the last good list", bad)
		}
		if _, err := b.Domains(t.Context()); !errors.Is(err, ErrDomainsUnreadable) {
			t.Errorf("record %q: Domains: %v, want ErrDomainsUnreadable", bad, err)
		}
		if _, err := a.AddDomains(t.Context(), []string{"new.example"}); !errors.Is(err, ErrDomainsUnreadable) || !strings.Contains(err.Error(), DomainsKey) {
			t.Errorf("record %q: AddDomains: %v, want ErrDomainsUnreadable naming the key", bad, err)
		}
		if err := a.RemoveDomain(t.Context(), "good.example"); !errors.Is(err, ErrDomainsUnreadable) {
			t.Errorf("record %q: RemoveDomain: %v, want ErrDomainsUnreadable", bad, err)
		}
		if got := storedDomains(t, storage); string(got) != bad {
			t.Fatalf("record %q overwritten with %s", bad, got)
		}
		if a.domainListed("new.example") {
			t.Errorf("record %q: a refused add changed node A's matcher", bad)
		}
	}

	// fixed by hand: applied again
	if err := storage.Store(t.Context(), DomainsKey, []byte(`{"domains":["fixed.example"]}`)); err != nil {
		t.Fatal(err)
	}
	waitListed(t, b, "fixed.example", true, 10*interval)
	waitListed(t, b, "good.example", false, 10*interval)
	if list, err := a.AddDomains(t.Context(), []string{"new.example"}); err != nil || !slices.Equal(list, []string{"fixed.example", "new.example"}) {
		t.Fatalf("AddDomains after the fix = %q, %v", list, err)
	}
}

// BenchmarkDomainListed is the handshake path's check against a full list
// (MaxDomains entries, exact and wildcard): map lookups per label, no
// storage read.
func BenchmarkDomainListed(b *testing.B) {
	entries := make([]string, 0, MaxDomains)
	for i := range MaxDomains / 2 {
		entries = append(entries, fmt.Sprintf("h%d.example.com", i), fmt.Sprintf("*.t%d.example.net", i))
	}
	m, err := allowlist.New(entries)
	if err != nil {
		b.Fatal(err)
	}
	r := &Runtime{domains: new(domainList)}
	r.domains.matcher.Store(m)
	names := []string{"h4242.example.com", "a.b.t777.example.net", "absent.example.org"}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.domainListed(names[i%len(names)])
	}
}

// TestDomainsRefuseUnservedAddresses: an address entry the app never
// serves (Allow refuses it for a reason other than not being listed:
// enable_ipv6, enable_ipv4_common_name) is refused, and nothing is
// stored; one it serves is listed in its normal form.
func TestDomainsRefuseUnservedAddresses(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	noIPv6 := errors.New("IPv6 addresses are not served (enable_ipv6 is false)")
	r := newTestRuntime(t, noCA, storage, Options{Allow: func(name string) error {
		if strings.Contains(name, ":") {
			return noIPv6
		}
		return ErrNotListed
	}})
	if _, err := r.AddDomains(t.Context(), []string{"kept.example", "2001:DB8::1"}); !errors.Is(err, ErrInvalidDomain) || !strings.Contains(err.Error(), "enable_ipv6") {
		t.Fatalf("adding an IPv6 address the app does not serve: %v, want ErrInvalidDomain naming enable_ipv6", err)
	}
	if _, err := storage.Load(t.Context(), DomainsKey); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused add stored the list: %v", err)
	}
	served := newTestRuntime(t, noCA, &certmagic.FileStorage{Path: t.TempDir()}, Options{Allow: func(string) error { return ErrNotListed }})
	got, err := served.AddDomains(t.Context(), []string{"[2001:DB8:0::1]"})
	if err != nil || len(got) != 1 || got[0] != "2001:db8::1" {
		t.Fatalf("AddDomains(IPv6) = %v, %v; want [2001:db8::1]", got, err)
	}
}
