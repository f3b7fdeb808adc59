package issuance

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// probedStorage is a file storage that records the storage checks' writes
// (keys rw_test_N) and can refuse them or give other bytes back.
type probedStorage struct {
	*certmagic.FileStorage
	mu      sync.Mutex
	probes  []string
	refuse  error // Store's error for a check's key
	corrupt bool  // a check's key loads as other bytes
}

func (s *probedStorage) Store(ctx context.Context, key string, value []byte) error {
	if strings.HasPrefix(key, "rw_test_") {
		s.mu.Lock()
		s.probes = append(s.probes, key)
		refuse := s.refuse
		s.mu.Unlock()
		if refuse != nil {
			return refuse
		}
	}
	return s.FileStorage.Store(ctx, key, value)
}

func (s *probedStorage) Load(ctx context.Context, key string) ([]byte, error) {
	data, err := s.FileStorage.Load(ctx, key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && s.corrupt && strings.HasPrefix(key, "rw_test_") {
		data[0]++
	}
	return data, err
}

func (s *probedStorage) set(refuse error, corrupt bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuse, s.corrupt = refuse, corrupt
}

// checks returns the storage checks' keys written so far, and makes sure
// none of them is left in storage.
func (s *probedStorage) checks(t *testing.T) []string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, key := range s.probes {
		if s.FileStorage.Exists(t.Context(), key) {
			t.Fatalf("the storage check left %s in storage", key)
		}
	}
	return append([]string(nil), s.probes...)
}

// TestStorageCheck: a passed check is trusted for storageCheckTTL, a
// failed one is not; its errors say what failed in certmagic's words; the
// key written is always deleted; an order that cannot wait for a running
// check gets its context's error.
func TestStorageCheck(t *testing.T) {
	st := &probedStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	c := newStorageCheck()
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return now }
	ctx := t.Context()
	want := func(what string, n int) {
		t.Helper()
		if got := st.checks(t); len(got) != n {
			t.Fatalf("%s: %d storage checks made (%q), want %d", what, len(got), got, n)
		}
	}

	for range 3 {
		if err := c.check(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	want("three orders at once", 1)
	now = now.Add(storageCheckTTL - time.Second)
	if err := c.check(ctx, st); err != nil {
		t.Fatal(err)
	}
	want("within the TTL", 1)
	now = now.Add(2 * time.Second)
	if err := c.check(ctx, st); err != nil {
		t.Fatal(err)
	}
	want("past the TTL", 2)

	// refused: not trusted, checked again by the next order
	st.set(errors.New("read-only file system"), false)
	now = now.Add(storageCheckTTL)
	for i := range 2 {
		err := c.check(ctx, st)
		if err == nil || !strings.Contains(err.Error(), "failed storage check: read-only file system - storage is probably misconfigured") {
			t.Fatalf("order %d with the storage refusing writes: %v; want the storage check's failure", i, err)
		}
	}
	want("a refusing storage", 4)

	// other bytes read back: refused, and the key still deleted
	st.set(nil, true)
	if err := c.check(ctx, st); err == nil || !strings.Contains(err.Error(), "load yielded different value than was stored") {
		t.Fatalf("a storage giving other bytes back: %v; want the check's failure", err)
	}
	want("a corrupting storage", 5)
	st.set(nil, false)
	if err := c.check(ctx, st); err != nil {
		t.Fatal(err)
	}
	want("the storage fixed", 6)

	// a check running elsewhere: an order whose context ends meanwhile
	c.sem <- struct{}{}
	ended, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.check(ended, st); !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting for a running check with an ended context: %v; want context.Canceled", err)
	}
	<-c.sem
	want("an order that gave up", 6)
}

// TestOrdersCheckStorage: certmagic's check before each order is off, the
// runtime's runs once for a minute of orders; an order or a renewal after
// a failed check never reaches the CA, and says why.
func TestOrdersCheckStorage(t *testing.T) {
	ca := startCA(t, testenv.PebbleOptions{})
	st := &probedStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	r := newTestRuntime(t, ca, st, Options{})
	if !r.magic.DisableStorageCheck {
		t.Fatal("certmagic's own storage check is still on")
	}
	const first = "a.check.example.com"
	r.mustGet(t, first)
	r.mustGet(t, "b.check.example.com")
	if got := st.checks(t); len(got) != 1 {
		t.Fatalf("two orders made %d storage checks, want 1", len(got))
	}

	st.set(errors.New("no space left on device"), false)
	r.check.now = func() time.Time { return time.Now().Add(storageCheckTTL) }
	orders := ca.pebble.Orders()
	err := r.renew(t.Context(), first, false)
	if err == nil || !strings.Contains(err.Error(), "failed storage check: no space left on device") {
		t.Fatalf("renewal with the storage full: %v; want the storage check's failure", err)
	}
	if _, err := r.get(t.Context(), "c.check.example.com"); err == nil || !strings.Contains(err.Error(), "failed storage check: no space left on device") {
		t.Fatalf("order with the storage full: %v; want the storage check's failure", err)
	}
	if n := ca.pebble.Orders() - orders; n != 0 {
		t.Fatalf("%d orders reached the CA after the storage check failed", n)
	}
}
