package issuance

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// The budget's tests run two budgets over two file storages on one
// directory: two nodes sharing a storage.

const testCAKey = "pebble.example-dir"

// twoNodes returns two budgets of limit per window over one shared file
// storage directory.
func twoNodes(t *testing.T, limit int, window time.Duration) (*budget, *budget) {
	t.Helper()
	dir := t.TempDir()
	logger := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	a := newBudget(&certmagic.FileStorage{Path: dir}, testCAKey, limit, window, logger.Named("a"))
	b := newBudget(&certmagic.FileStorage{Path: dir}, testCAKey, limit, window, logger.Named("b"))
	return a, b
}

// mustReserve reserves name on b, failing the test on error.
func mustReserve(t *testing.T, b *budget, name string) func(bool) {
	t.Helper()
	release, err := b.reserve(t.Context(), name)
	if err != nil {
		t.Fatalf("reserving %s: %v", name, err)
	}
	return release
}

// mustRefuse checks that reserving name on b fails with a BudgetError for
// domain, and returns it.
func mustRefuse(t *testing.T, b *budget, name, domain string) BudgetError {
	t.Helper()
	release, err := b.reserve(t.Context(), name)
	if err == nil {
		release(false)
		t.Fatalf("reserving %s succeeded over budget", name)
	}
	be, ok := errors.AsType[BudgetError](err)
	if !ok {
		t.Fatalf("reserving %s: %v (%T), want a BudgetError", name, err, err)
	}
	if be.Domain != domain || be.Name != name {
		t.Fatalf("BudgetError for %s/%s, want %s/%s", be.Name, be.Domain, name, domain)
	}
	return be
}

// record reads domain's record as stored.
func record(t *testing.T, b *budget, domain string) budgetRecord {
	t.Helper()
	data, err := b.storage.Load(t.Context(), BudgetKey(b.caKey, domain))
	if err != nil {
		t.Fatalf("loading the budget record of %s: %v", domain, err)
	}
	var rec budgetRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatalf("budget record of %s: %v: %s", domain, err, data)
	}
	return rec
}

// names lists the names of rec, with "?" after the reserved ones.
func names(rec budgetRecord) string {
	var out []string
	for _, e := range rec.Certificates {
		n := e.Name
		if e.Reserved {
			n += "?"
		}
		out = append(out, n)
	}
	return strings.Join(out, " ")
}

func TestRegisteredDomain(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"a.b.example.co.uk", "example.co.uk"},
		{"example.co.uk", "example.co.uk"},
		{"www.example.com", "example.com"},
		{"deep.a.b.c.example.com", "example.com"},
		{"example.com", "example.com"},
		{"WWW.Example.COM.", "example.com"},
		{"foo.github.io", "foo.github.io"},
		{"x.foo.github.io", "foo.github.io"},
		{"github.io", "github.io"}, // a public suffix itself
		{"co.uk", "co.uk"},
		{"com", "com"},
		{"localhost", "localhost"}, // a single label
		{"127.0.0.1", "127.0.0.1"},
		{"::1", "::1"},
		{"2001:db8::1", "2001:db8::1"},
		{"xn--mnchen-3ya.de", "xn--mnchen-3ya.de"},
		{"a.xn--mnchen-3ya.de", "xn--mnchen-3ya.de"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RegisteredDomain(tc.name); got != tc.want {
				t.Fatalf("RegisteredDomain(%q) = %q, want %q", tc.name, got, tc.want)
			}
		})
	}
}

func TestBudgetKey(t *testing.T) {
	if got, want := BudgetKey("acme-v02.api.letsencrypt.org-directory", "example.co.uk"),
		"caddy-acme/budget/acme-v02.api.letsencrypt.org-directory/example.co.uk.json"; got != want {
		t.Fatalf("BudgetKey = %q, want %q", got, want)
	}
}

// TestBudgetNilAllows: a limit of 0 is no budget, and a nil budget allows
// everything.
func TestBudgetNilAllows(t *testing.T) {
	b := newBudget(&certmagic.FileStorage{Path: t.TempDir()}, testCAKey, 0, time.Hour, nil)
	if b != nil {
		t.Fatal("newBudget with limit 0 is not nil")
	}
	for i := range 3 {
		release, err := b.reserve(t.Context(), "n"+strconv.Itoa(i)+".example.com")
		if err != nil {
			t.Fatal(err)
		}
		release(true)
		release(false)
	}
	if err := b.check("x.example.com"); err != nil {
		t.Fatal(err)
	}
}

// TestBudgetLimit: the limit holds across two nodes; a name already
// counted counts once; the node that was refused refuses from memory
// (check), the other finds out from storage; other registered domains
// are not affected; the error says everything.
func TestBudgetLimit(t *testing.T) {
	n1, n2 := twoNodes(t, 3, 7*24*time.Hour)
	mustReserve(t, n1, "a.example.com")(true)
	mustReserve(t, n2, "b.example.com")(true)
	mustReserve(t, n1, "c.x.example.com")(true)

	if err := n1.check("d.example.com"); err != nil {
		t.Fatalf("check before any refusal: %v", err)
	}
	be := mustRefuse(t, n1, "d.example.com", "example.com")
	msg := be.Error()
	for _, want := range []string{"d.example.com", "example.com", "budget of 3 new certificates in 7 days", "domain_budget", "0 disables", be.Next.Format(time.RFC3339)} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if be.Limit != 3 || be.Window != 7*24*time.Hour || be.Wait <= 0 || !be.Next.After(time.Now()) {
		t.Errorf("BudgetError %+v", be)
	}

	// n1 refuses from memory; n2 does not know yet, and learns from storage
	if err := n1.check("e.example.com"); err == nil {
		t.Fatal("check on the refusing node allows another name of the domain")
	} else if got, ok := errors.AsType[BudgetError](err); !ok || got.Name != "e.example.com" || got.Domain != "example.com" {
		t.Fatalf("check: %v", err)
	}
	if err := n1.check("e.example.org"); err != nil {
		t.Fatalf("check of another registered domain: %v", err)
	}
	if err := n2.check("e.example.com"); err != nil {
		t.Fatalf("check on the other node: %v", err)
	}
	mustRefuse(t, n2, "e.example.com", "example.com")
	if err := n2.check("f.example.com"); err == nil {
		t.Fatal("check on n2 allows after its refusal")
	}

	// a name already issued takes no new slot, whatever the outcome
	mustReserve(t, n2, "a.example.com")(true)
	mustReserve(t, n1, "b.example.com")(false)
	if got := names(record(t, n1, "example.com")); got != "a.example.com b.example.com c.x.example.com" {
		t.Fatalf("record: %s", got)
	}

	// other registered domains have their own budget
	mustReserve(t, n1, "a.example.org")(true)
	mustReserve(t, n2, "a.foo.github.io")(true)
	mustReserve(t, n2, "a.bar.github.io")(true)
}

// TestBudgetRelease: a failed order gives its slot back, an issued one
// keeps it.
func TestBudgetRelease(t *testing.T) {
	n1, n2 := twoNodes(t, 1, time.Hour)
	release := mustReserve(t, n1, "a.example.com")
	if got := names(record(t, n1, "example.com")); got != "a.example.com?" {
		t.Fatalf("record while reserved: %s", got)
	}
	mustRefuse(t, n1, "b.example.com", "example.com")
	mustRefuse(t, n2, "b.example.com", "example.com")
	release(false)
	release(true) // a second call does nothing
	if got := names(record(t, n1, "example.com")); got != "" {
		t.Fatalf("record after release(false): %q", got)
	}
	if err := n1.check("b.example.com"); err != nil {
		t.Fatalf("check on the node that gave the slot back: %v", err)
	}

	release = mustReserve(t, n2, "b.example.com")
	release(true)
	rec := record(t, n1, "example.com")
	if got := names(rec); got != "b.example.com" {
		t.Fatalf("record after release(true): %s", got)
	}
	if rec.Certificates[0].Token != "" || rec.Domain != "example.com" {
		t.Fatalf("issued entry %+v of %q", rec.Certificates[0], rec.Domain)
	}
	mustRefuse(t, n1, "c.example.com", "example.com")
}

// TestBudgetWindow: an issued certificate counts for the window, and is
// dropped from the record after it.
func TestBudgetWindow(t *testing.T) {
	const window = 2 * time.Second
	n1, n2 := twoNodes(t, 1, window)
	start := time.Now()
	mustReserve(t, n1, "a.example.com")(true)
	be := mustRefuse(t, n2, "b.example.com", "example.com")
	if be.Next.Before(start.Add(window)) || be.Next.After(time.Now().Add(window)) {
		t.Fatalf("next slot at %s, want the window after the first issuance (%s)", be.Next, start.Add(window))
	}
	if err := n2.check("b.example.com"); err == nil {
		t.Fatal("check allows before the window ends")
	}

	time.Sleep(time.Until(be.Next) + 50*time.Millisecond)
	if err := n2.check("b.example.com"); err != nil {
		t.Fatalf("check after the window: %v", err)
	}
	mustReserve(t, n2, "b.example.com")(true)
	if got := names(record(t, n1, "example.com")); got != "b.example.com" {
		t.Fatalf("record after the window: %s, want the expired entry dropped", got)
	}
}

// TestBudgetReservationTTL: a reservation never released (the node
// crashed) stops counting after the TTL; its late release(false) does not
// drop the slot another order holds now. An order of a name another order
// reserved takes the reservation over without a second slot.
func TestBudgetReservationTTL(t *testing.T) {
	const ttl = time.Second
	n1, n2 := twoNodes(t, 1, time.Hour)
	n1.ttl, n2.ttl = ttl, ttl

	crashed := mustReserve(t, n1, "a.example.com")
	be := mustRefuse(t, n2, "b.example.com", "example.com")
	if be.Wait > ttl {
		t.Fatalf("next slot in %s, want within the reservation TTL %s", be.Wait, ttl)
	}
	time.Sleep(time.Until(be.Next) + 50*time.Millisecond)
	release := mustReserve(t, n2, "b.example.com")
	if got := names(record(t, n1, "example.com")); got != "b.example.com?" {
		t.Fatalf("record after the TTL: %s", got)
	}
	crashed(false) // late: a.example.com is no longer there
	if got := names(record(t, n1, "example.com")); got != "b.example.com?" {
		t.Fatalf("record after a stale release: %s", got)
	}

	// n1 orders b.example.com too: it takes the reservation over
	takeover := mustReserve(t, n1, "b.example.com")
	release(false) // n2's reservation was taken over: nothing to drop
	if got := names(record(t, n1, "example.com")); got != "b.example.com?" {
		t.Fatalf("record after the first holder's release: %s", got)
	}
	takeover(true)
	if got := names(record(t, n1, "example.com")); got != "b.example.com" {
		t.Fatalf("record after issuance: %s", got)
	}
	mustRefuse(t, n2, "c.example.com", "example.com")

	// a certificate issued after its reservation expired is still counted
	n3, _ := twoNodes(t, 1, time.Hour)
	n3.ttl = 100 * time.Millisecond
	late := mustReserve(t, n3, "a.example.net")
	time.Sleep(200 * time.Millisecond)
	other := mustReserve(t, n3, "b.example.net") // the expired reservation freed its slot
	late(true)
	other(true)
	if got := names(record(t, n3, "example.net")); got != "b.example.net a.example.net" {
		t.Fatalf("record: %s", got)
	}
}

// TestBudgetConcurrent: 20 orders at once on two nodes, with a budget of
// 5: exactly 5 get a slot.
func TestBudgetConcurrent(t *testing.T) {
	const limit, orders = 5, 20
	n1, n2 := twoNodes(t, limit, time.Hour)
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range orders {
		node := n1
		if i%2 == 1 {
			node = n2
		}
		wg.Go(func() {
			_, err := node.reserve(t.Context(), "n"+strconv.Itoa(i)+".example.com")
			switch _, isBudget := errors.AsType[BudgetError](err); {
			case err == nil:
				ok.Add(1)
			case isBudget:
				refused.Add(1)
			default:
				t.Errorf("reserving: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != limit || refused.Load() != orders-limit {
		t.Fatalf("%d reserved, %d refused; want %d and %d", ok.Load(), refused.Load(), limit, orders-limit)
	}
	if n := len(record(t, n1, "example.com").Certificates); n != limit {
		t.Fatalf("record holds %d entries, want %d", n, limit)
	}
}

// TestBudgetUnreadableRecord: a record that does not parse is replaced by
// a fresh one, with a warning naming its key.
func TestBudgetUnreadableRecord(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	b := newBudget(storage, testCAKey, 1, time.Hour, zap.New(core))
	key := BudgetKey(testCAKey, "example.com")
	if err := storage.Store(t.Context(), key, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	mustReserve(t, b, "a.example.com")(true)
	if got := names(record(t, b, "example.com")); got != "a.example.com" {
		t.Fatalf("record: %s", got)
	}
	warned := logs.FilterMessageSnippet("unreadable").FilterField(zap.String("key", key))
	if warned.Len() != 1 {
		t.Fatalf("warnings naming %s: %d; logs: %v", key, warned.Len(), logs.All())
	}
	mustRefuse(t, b, "b.example.com", "example.com")
}

// TestBudgetDeniedMemoryBounded: the domains a node remembers as over
// budget are capped; the one whose slot frees first goes.
func TestBudgetDeniedMemoryBounded(t *testing.T) {
	b := newBudget(&certmagic.FileStorage{Path: t.TempDir()}, testCAKey, 1, time.Hour, nil)
	now := time.Now()
	for i := range maxBudgetDenials {
		d := "d" + strconv.Itoa(i) + ".com"
		b.remember(BudgetError{Domain: d, Next: now.Add(time.Hour + time.Duration(i)*time.Second)})
	}
	b.remember(BudgetError{Domain: "new.com", Next: now.Add(2 * time.Hour)})
	if n := len(b.denied); n != maxBudgetDenials {
		t.Fatalf("%d domains remembered, want %d", n, maxBudgetDenials)
	}
	if b.check("x.d0.com") != nil {
		t.Fatal("the domain freeing first was kept")
	}
	if b.check("x.d1.com") == nil || b.check("x.new.com") == nil {
		t.Fatal("a domain over budget was forgotten")
	}

	// past domains go first
	b.remember(BudgetError{Domain: "d1.com", Next: now.Add(-time.Second)})
	b.remember(BudgetError{Domain: "d0.com", Next: now.Add(time.Hour)})
	if b.check("x.d2.com") == nil || b.check("x.d0.com") == nil {
		t.Fatal("a domain over budget was forgotten while an expired one was kept")
	}
}

// TestBudgetDenied: a refusal is counted in
// caddy_acme_budget_denials_total and passed to OnBudgetDenied.
func TestBudgetDenied(t *testing.T) {
	var got []string
	r := buildRuntime(t, noCA, nil, Options{OnBudgetDenied: func(name string, err error) {
		got = append(got, name+": "+err.Error())
	}})
	before := value(metrics.budgetDenials)
	r.budgetDenied("a.example.com", BudgetError{Name: "a.example.com", Domain: "example.com", Limit: 1, Window: time.Hour})
	if d := value(metrics.budgetDenials) - before; d != 1 {
		t.Fatalf("budget denials counted %v, want 1", d)
	}
	if len(got) != 1 || !strings.HasPrefix(got[0], "a.example.com: no new certificate for a.example.com") {
		t.Fatalf("OnBudgetDenied got %q", got)
	}
}
