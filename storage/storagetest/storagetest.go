// Package storagetest is a conformance suite for certmagic storages: the
// whole certmagic v0.25.6 Storage contract (missing keys, recursive Delete,
// directories in Exists, Stat and List, full keys, List("", true)), what
// Caddy's file storage does where that contract is silent (an empty root
// lists no keys without error; a key cannot be both a value and a
// directory: Store refuses either with the file storage's error, matching
// fs.ErrExist or syscall.ENOTDIR), values
// and keys that break naive implementations, concurrent use, and distributed
// locks between two independent instances of the storage (two nodes):
// exclusion, blocking, context cancellation, TryLock, RenewLockLease,
// ownership, and takeover of a lock whose holder crashed.
//
// Any certmagic storage can be held to it:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t testing.TB, namespace string) certmagic.Storage {
//			return newStorageOver(t, namespace)
//		}, storagetest.Options{Lease: 2 * time.Second, Crash: crash})
//	}
//
// Bench measures the same operations, with the percentiles a cluster cares
// about.
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// Opener returns a new, independent storage instance (a node: its own
// client, its own held locks) over namespace. Two calls with the same
// namespace see the same data, as two nodes of one cluster do; different
// namespaces never see each other's keys. namespace matches [a-z0-9-]{1,40}.
// The instance is ready to use and is cleaned up by t.Cleanup.
type Opener func(t testing.TB, namespace string) certmagic.Storage

// Options describe the storage under test.
type Options struct {
	// Lease is the lock lease of the opened storages (keep it short in
	// tests, e.g. 2s). A lock is expected to stay held past it while its
	// holder lives, and to be taken over within a few leases once its holder
	// crashed. 0 skips both checks.
	Lease time.Duration

	// Crash makes s behave as if its process died while holding its locks:
	// lease refreshes stop and nothing is unlocked. nil skips the takeover
	// check.
	Crash func(s certmagic.Storage)

	// UnownedUnlock declares that Unlock releases a lock another instance
	// holds. Caddy's file storage does; no caddy-acme storage may.
	UnownedUnlock bool
}

// Run runs the conformance suite.
func Run(t *testing.T, open Opener, opts Options) {
	t.Run("MissingKeys", func(t *testing.T) { testMissing(t, open(t, ns(t))) })
	t.Run("StoreLoadStat", func(t *testing.T) { testStoreLoad(t, open(t, ns(t))) })
	t.Run("Directories", func(t *testing.T) { testDirectories(t, open(t, ns(t))) })
	t.Run("RecursiveDelete", func(t *testing.T) { testDelete(t, open(t, ns(t))) })
	t.Run("ListRoot", func(t *testing.T) { testListRoot(t, open(t, ns(t))) })
	t.Run("EmptyRoot", func(t *testing.T) { testEmptyRoot(t, open(t, ns(t))) })
	t.Run("ValueDirectoryConflict", func(t *testing.T) { testConflict(t, open(t, ns(t))) })
	t.Run("Values", func(t *testing.T) { testValues(t, open(t, ns(t))) })
	t.Run("Keys", func(t *testing.T) { testKeys(t, open(t, ns(t))) })
	t.Run("TwoNodesShareData", func(t *testing.T) {
		n := ns(t)
		testTwoNodes(t, open(t, n), open(t, n))
	})
	t.Run("ConcurrentStoreLoad", func(t *testing.T) {
		n := ns(t)
		testConcurrent(t, open(t, n), open(t, n))
	})
	t.Run("Locks", func(t *testing.T) { testLocks(t, open, opts) })
	if s := open(t, ns(t)); isManyLoader(s) { // optional: only where the storage has it
		t.Run("LoadMany", func(t *testing.T) { testLoadMany(t, s) })
	}
}

// ns returns a namespace unique to this test.
func ns(t testing.TB) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("st-%x", b)
}

func store(t testing.TB, s certmagic.Storage, key string, value []byte) {
	t.Helper()
	if err := s.Store(context.Background(), key, value); err != nil {
		t.Fatalf("Store(%q): %v", key, err)
	}
}

func load(t testing.TB, s certmagic.Storage, key string) []byte {
	t.Helper()
	v, err := s.Load(context.Background(), key)
	if err != nil {
		t.Fatalf("Load(%q): %v", key, err)
	}
	return v
}

func list(t testing.TB, s certmagic.Storage, prefix string, recursive bool) []string {
	t.Helper()
	keys, err := s.List(context.Background(), prefix, recursive)
	if err != nil {
		t.Fatalf("List(%q, %v): %v", prefix, recursive, err)
	}
	slices.Sort(keys)
	return keys
}

func del(t testing.TB, s certmagic.Storage, key string) {
	t.Helper()
	if err := s.Delete(context.Background(), key); err != nil {
		t.Fatalf("Delete(%q): %v", key, err)
	}
}

func wantList(t testing.TB, s certmagic.Storage, prefix string, recursive bool, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := list(t, s, prefix, recursive); !slices.Equal(got, want) {
		t.Fatalf("List(%q, %v) = %q, want %q", prefix, recursive, got, want)
	}
}

func wantNotExist(t testing.TB, what string, err error) {
	t.Helper()
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s: got %v, want fs.ErrNotExist", what, err)
	}
}

func testMissing(t *testing.T, s certmagic.Storage) {
	ctx := context.Background()
	_, err := s.Load(ctx, "no/such/key")
	wantNotExist(t, "Load of a missing key", err)
	_, err = s.Stat(ctx, "no/such/key")
	wantNotExist(t, "Stat of a missing key", err)
	_, err = s.List(ctx, "no/such", false)
	wantNotExist(t, "List of a missing directory", err)
	_, err = s.List(ctx, "no/such", true)
	wantNotExist(t, "recursive List of a missing directory", err)
	if s.Exists(ctx, "no/such/key") {
		t.Fatal("Exists of a missing key is true")
	}
	if err := s.Delete(ctx, "no/such/key"); err != nil {
		t.Fatalf("Delete of a missing key: %v, want nil", err)
	}
	if err := s.Delete(ctx, "no/such/key"); err != nil {
		t.Fatalf("second Delete of a missing key: %v, want nil", err)
	}
}

func testStoreLoad(t *testing.T, s certmagic.Storage) {
	ctx := context.Background()
	before := time.Now().Add(-time.Hour)
	store(t, s, "certs/example.com/example.com.crt", []byte("first"))
	if got := load(t, s, "certs/example.com/example.com.crt"); string(got) != "first" {
		t.Fatalf("Load = %q, want %q", got, "first")
	}
	store(t, s, "certs/example.com/example.com.crt", []byte("second, longer"))
	if got := load(t, s, "certs/example.com/example.com.crt"); string(got) != "second, longer" {
		t.Fatalf("Load after overwrite = %q", got)
	}
	store(t, s, "certs/example.com/example.com.crt", []byte("3rd"))
	if got := load(t, s, "certs/example.com/example.com.crt"); string(got) != "3rd" {
		t.Fatalf("Load after a shorter overwrite = %q", got)
	}
	info, err := s.Stat(ctx, "certs/example.com/example.com.crt")
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if info.Key != "certs/example.com/example.com.crt" || !info.IsTerminal || info.Size != 3 {
		t.Fatalf("Stat = %+v, want the key, IsTerminal, Size 3", info)
	}
	if info.Modified.Before(before) || info.Modified.After(time.Now().Add(time.Hour)) {
		t.Fatalf("Stat.Modified = %s, want about now", info.Modified)
	}
	if !s.Exists(ctx, "certs/example.com/example.com.crt") {
		t.Fatal("Exists of a stored key is false")
	}
}

func testDirectories(t *testing.T, s certmagic.Storage) {
	ctx := context.Background()
	for _, k := range []string{"a/b/c", "a/b/d", "a/e", "ab/c", "a/b/f/g"} {
		store(t, s, k, []byte(k))
	}
	for _, k := range []string{"a", "a/b", "a/b/c", "a/b/f", "ab", "a/e"} {
		if !s.Exists(ctx, k) {
			t.Fatalf("Exists(%q) = false", k)
		}
	}
	for _, k := range []string{"a/x", "b", "a/b/f/x", "a/bb"} {
		if s.Exists(ctx, k) {
			t.Fatalf("Exists(%q) = true", k)
		}
	}
	for _, dir := range []string{"a", "a/b", "a/b/f", "ab"} {
		info, err := s.Stat(ctx, dir)
		if err != nil {
			t.Fatalf("Stat(%q) of a directory: %v", dir, err)
		}
		if info.IsTerminal || info.Key != dir {
			t.Fatalf("Stat(%q) = %+v, want Key %q and IsTerminal false", dir, info, dir)
		}
	}
	wantList(t, s, "a", false, "a/b", "a/e")
	wantList(t, s, "a/", false, "a/b", "a/e")
	wantList(t, s, "a/b", false, "a/b/c", "a/b/d", "a/b/f")
	wantList(t, s, "a", true, "a/b", "a/b/c", "a/b/d", "a/b/f", "a/b/f/g", "a/e")
	wantList(t, s, "ab", false, "ab/c")
	wantList(t, s, "a/e", false) // a file has no children
}

func testDelete(t *testing.T, s certmagic.Storage) {
	ctx := context.Background()
	for _, k := range []string{"a/b/c", "a/b/d/e", "a/f", "ab/c", "a/bc"} {
		store(t, s, k, []byte(k))
	}
	del(t, s, "a/f")
	if s.Exists(ctx, "a/f") {
		t.Fatal("a/f exists after Delete")
	}
	wantList(t, s, "a", false, "a/b", "a/bc")

	del(t, s, "a/b") // a directory: everything under it goes
	for _, k := range []string{"a/b", "a/b/c", "a/b/d", "a/b/d/e"} {
		if s.Exists(ctx, k) {
			t.Fatalf("%s exists after Delete(a/b)", k)
		}
	}
	_, err := s.Load(ctx, "a/b/d/e")
	wantNotExist(t, "Load under a deleted directory", err)
	if got := string(load(t, s, "a/bc")); got != "a/bc" {
		t.Fatalf("a/bc (not under a/b) = %q after Delete(a/b)", got)
	}
	wantList(t, s, "a", false, "a/bc")

	del(t, s, "a")
	if s.Exists(ctx, "a") || s.Exists(ctx, "a/bc") {
		t.Fatal("a still exists after Delete(a)")
	}
	_, err = s.List(ctx, "a", true)
	wantNotExist(t, "List of a deleted directory", err)
	if got := string(load(t, s, "ab/c")); got != "ab/c" {
		t.Fatalf("ab/c = %q after Delete(a): prefixes are per component", got)
	}
}

func testListRoot(t *testing.T, s certmagic.Storage) {
	keys := []string{"acme/ca/users/x/x.json", "certificates/ca/example.com/example.com.crt", "certificates/ca/example.com/example.com.key", "last_clean.json"}
	for _, k := range keys {
		store(t, s, k, []byte(k))
	}
	wantList(t, s, "", false, "acme", "certificates", "last_clean.json")
	wantList(t, s, "", true,
		"acme", "acme/ca", "acme/ca/users", "acme/ca/users/x", "acme/ca/users/x/x.json",
		"certificates", "certificates/ca", "certificates/ca/example.com",
		"certificates/ca/example.com/example.com.crt", "certificates/ca/example.com/example.com.key",
		"last_clean.json")

	// what `caddy storage export` does: every terminal key of List("", true)
	var files []string
	for _, k := range list(t, s, "", true) {
		info, err := s.Stat(context.Background(), k)
		if err != nil {
			t.Fatalf("Stat(%q) of a listed key: %v", k, err)
		}
		if info.IsTerminal {
			files = append(files, k)
		}
	}
	slices.Sort(keys)
	if !slices.Equal(files, keys) {
		t.Fatalf("terminal keys of List(\"\", true) = %q, want %q", files, keys)
	}
}

// testEmptyRoot: the root of an empty storage (never written, or emptied)
// lists as empty, without error, as the root of Caddy's file storage does
// once its directory exists (Caddy creates it at start, writing
// instance.uuid there); only a missing directory below the root is
// fs.ErrNotExist.
func testEmptyRoot(t *testing.T, s certmagic.Storage) {
	ctx := context.Background()
	wantEmpty := func(when string) {
		t.Helper()
		for _, recursive := range []bool{false, true} {
			keys, err := s.List(ctx, "", recursive)
			if err != nil || len(keys) != 0 {
				t.Fatalf("%s: List(\"\", %v) = %q, %v; want no keys and no error", when, recursive, keys, err)
			}
		}
	}
	wantEmpty("a new storage")
	store(t, s, "a/b/c", []byte("c"))
	del(t, s, "a")
	wantEmpty("after Delete of its only directory")
	store(t, s, "x", []byte("x"))
	del(t, s, "x")
	wantEmpty("after Delete of its only key")
	_, err := s.List(ctx, "a", false)
	wantNotExist(t, "List of a deleted directory of an empty storage", err)
}

// testConflict: a key cannot be both a value and a directory. Caddy's file
// storage refuses both orders (its rename onto a directory fails with
// EEXIST, its MkdirAll below a file with ENOTDIR), and `caddy storage
// export` could not write such a pair into an extractable archive.
func testConflict(t *testing.T, s certmagic.Storage) {
	ctx := context.Background()
	store(t, s, "dir/child", []byte("child"))
	for _, k := range []string{"dir", "dir/"} {
		err := s.Store(ctx, k, []byte("value"))
		if !errors.Is(err, fs.ErrExist) {
			t.Fatalf("Store(%q) over a directory: %v, want an error matching fs.ErrExist", k, err)
		}
	}
	store(t, s, "file", []byte("value"))
	store(t, s, "deep/er/file", []byte("value"))
	for _, k := range []string{"file/x", "file/x/y", "deep/er/file/x", "deep/er/file/x/y/z"} {
		err := s.Store(ctx, k, []byte("below a value"))
		if !errors.Is(err, syscall.ENOTDIR) {
			t.Fatalf("Store(%q) below a value: %v, want an error matching syscall.ENOTDIR", k, err)
		}
		// (not Exists: the file storage's answers true for any error but
		// fs.ErrNotExist, ENOTDIR here)
		if v, err := s.Load(ctx, k); err == nil {
			t.Fatalf("Load(%q) = %q after its Store was refused", k, v)
		}
	}
	// nothing changed
	if got := string(load(t, s, "dir/child")); got != "child" {
		t.Fatalf("dir/child = %q after the refused Store(dir)", got)
	}
	if info, err := s.Stat(ctx, "dir"); err != nil || info.IsTerminal {
		t.Fatalf("Stat(dir) = %+v, %v after the refused Store(dir); want a directory", info, err)
	}
	if v, err := s.Load(ctx, "dir"); err == nil { // the file storage: EISDIR
		t.Fatalf("Load(dir) = %q after its Store was refused", v)
	}
	if info, err := s.Stat(ctx, "file"); err != nil || !info.IsTerminal || string(load(t, s, "file")) != "value" {
		t.Fatalf("Stat(file) = %+v, %v after the refused Stores below it; want the value", info, err)
	}
	wantList(t, s, "", false, "deep", "dir", "file")
	wantList(t, s, "file", true)

	// what is not a conflict: overwriting a value, names that only share
	// a prefix
	store(t, s, "file", []byte("second"))
	store(t, s, "dirx", []byte("dirx"))
	store(t, s, "file2/x", []byte("file2/x"))
	store(t, s, "file.x", []byte("file.x"))
	store(t, s, "dir/child2", []byte("child2"))
	// once the other is deleted, the name is free
	del(t, s, "dir")
	store(t, s, "dir", []byte("now a value"))
	del(t, s, "file")
	store(t, s, "file/x", []byte("now below a directory"))
	wantList(t, s, "", true, "deep", "deep/er", "deep/er/file", "dir", "dirx", "file", "file/x", "file.x", "file2", "file2/x")
}

func testValues(t *testing.T, s certmagic.Storage) {
	ctx := context.Background()
	big := make([]byte, 1<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	every := make([]byte, 512)
	for i := range every {
		every[i] = byte(i)
	}
	for name, v := range map[string][]byte{
		"empty":        {},
		"one-zero":     {0},
		"every-byte":   every,
		"invalid-utf8": []byte("\xff\xfe\xc3\x28 not utf-8 \x00"),
		"pem":          []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
		"json":         []byte(`{"value":"x","note":"y"}`),
		// the markers of backend.Sealer, which escapes such values
		"sealed-marker": []byte("caddy-acme:aes256gcm:v1:not sealed"),
		"plain-marker":  []byte("caddy-acme:plain:v1:not escaped"),
		"1MiB":          big,
	} {
		key := "values/" + name
		store(t, s, key, v)
		got := load(t, s, key)
		if !bytes.Equal(got, v) {
			t.Fatalf("%s: Load returned %d bytes that differ from the %d stored", name, len(got), len(v))
		}
		info, err := s.Stat(ctx, key)
		if err != nil || info.Size != int64(len(v)) || !info.IsTerminal {
			t.Fatalf("%s: Stat = %+v, %v; want Size %d", name, info, err, len(v))
		}
	}
}

func testKeys(t *testing.T, s certmagic.Storage) {
	ctx := context.Background()
	keys := []string{
		"certificates/acme-v02.api.letsencrypt.org-directory/wildcard_.example.com/wildcard_.example.com.crt",
		"odd/unicode-日本語-é.crt",
		"odd/xn--bcher-kva.example.json",
		"odd/with space",
		"odd/plus+equals=comma,semicolon;",
		"odd/colon:hash#at@tilde~",
		"odd/percent%41%2F",
		"odd/quote'double\"",
		"odd/parens(brackets)[braces]{}",
		"odd/star*question?",
		"odd/dots..between",
		"odd/UPPER-lower",
		"odd/upper-LOWER",
	}
	for _, k := range keys {
		store(t, s, k, []byte(k))
	}
	for _, k := range keys {
		if got := string(load(t, s, k)); got != k {
			t.Fatalf("Load(%q) = %q", k, got)
		}
		info, err := s.Stat(ctx, k)
		if err != nil || info.Key != k {
			t.Fatalf("Stat(%q) = %+v, %v", k, info, err)
		}
	}
	want := keys[1:]
	wantList(t, s, "odd", false, want...)
	for _, k := range keys {
		del(t, s, k)
		if s.Exists(ctx, k) {
			t.Fatalf("%q exists after Delete", k)
		}
	}
}

func testTwoNodes(t *testing.T, a, b certmagic.Storage) {
	store(t, a, "shared/x", []byte("from a"))
	if got := string(load(t, b, "shared/x")); got != "from a" {
		t.Fatalf("node b loads %q, want what node a stored", got)
	}
	store(t, b, "shared/x", []byte("from b"))
	if got := string(load(t, a, "shared/x")); got != "from b" {
		t.Fatalf("node a loads %q after node b's overwrite", got)
	}
	wantList(t, b, "shared", false, "shared/x")
	del(t, a, "shared")
	if b.Exists(context.Background(), "shared/x") {
		t.Fatal("node b still sees a key node a deleted")
	}
}

// testConcurrent stores whole values of 64 KiB from several writers on two
// nodes while readers load them: every value read must be one written, whole.
func testConcurrent(t *testing.T, a, b certmagic.Storage) {
	const writers, rounds, size = 4, 8, 64 << 10
	value := func(w, r int) []byte {
		return bytes.Repeat([]byte{byte('A' + w), byte('0' + r%10)}, size/2)
	}
	valid := func(v []byte) bool {
		return len(v) == size && bytes.Equal(v, bytes.Repeat(v[:2], size/2))
	}
	store(t, a, "race/key", value(0, 0))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range writers {
		wg.Go(func() {
			s := []certmagic.Storage{a, b}[w%2]
			for r := range rounds {
				if err := s.Store(ctx, "race/key", value(w, r)); err != nil {
					errs <- fmt.Errorf("storing: %w", err)
					return
				}
			}
		})
	}
	var reads atomic.Int64
	var rg sync.WaitGroup
	for i := range 2 {
		rg.Go(func() {
			s := []certmagic.Storage{a, b}[i]
			for ctx.Err() == nil {
				v, err := s.Load(ctx, "race/key")
				if err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("loading: %w", err)
					}
					return
				}
				if !valid(v) {
					errs <- fmt.Errorf("torn value: %d bytes starting %q", len(v), v[:min(len(v), 8)])
					return
				}
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	cancel()
	rg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if !valid(load(t, a, "race/key")) || reads.Load() == 0 {
		t.Fatalf("final value invalid or no reads (%d)", reads.Load())
	}
}

// within is how long the suite waits for something that must happen (a
// lock handed over, a cancelled Lock returning): a bound against hanging,
// never a speed requirement; speed is for Bench.
const within = 30 * time.Second

func testLocks(t *testing.T, open Opener, opts Options) {
	nodes := func(t *testing.T, n int) []certmagic.Storage {
		name := ns(t)
		out := make([]certmagic.Storage, n)
		for i := range out {
			out[i] = open(t, name)
		}
		return out
	}
	bg := context.Background()

	t.Run("ExclusionAndHandoff", func(t *testing.T) {
		n := nodes(t, 2)
		a, b := n[0], n[1]
		// certmagic's issue lock of a name, and of a wildcard certificate
		for _, lock := range []string{"issue_cert_example.com", "issue_cert_*.example.com"} {
			if err := a.Lock(bg, lock); err != nil {
				t.Fatalf("a.Lock(%q): %v", lock, err)
			}
			got := make(chan error, 1)
			go func() { got <- b.Lock(bg, lock) }()
			select {
			case err := <-got:
				t.Fatalf("b.Lock(%q) returned (%v) while a holds the lock", lock, err)
			case <-time.After(300 * time.Millisecond):
			}
			if err := a.Unlock(bg, lock); err != nil {
				t.Fatalf("a.Unlock(%q): %v", lock, err)
			}
			select {
			case err := <-got:
				if err != nil {
					t.Fatalf("b.Lock(%q) after a.Unlock: %v", lock, err)
				}
			case <-time.After(within):
				t.Fatalf("b.Lock(%q) did not return after a.Unlock", lock)
			}
			if err := b.Unlock(bg, lock); err != nil {
				t.Fatalf("b.Unlock(%q): %v", lock, err)
			}
		}
		// a lock name is independent of others and of the key space
		if err := a.Lock(bg, "x"); err != nil {
			t.Fatal(err)
		}
		if err := b.Lock(bg, "y"); err != nil {
			t.Fatal(err)
		}
		for _, s := range []certmagic.Storage{a, b} {
			for _, k := range []string{"x", "y"} {
				if _, err := s.Load(bg, k); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("a lock shows in the key space as %q: %v", k, err)
				}
			}
		}
		if err := a.Unlock(bg, "x"); err != nil {
			t.Fatal(err)
		}
		if err := b.Unlock(bg, "y"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("MutualExclusionUnderContention", func(t *testing.T) {
		n := nodes(t, 4)
		var inside, max atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, len(n)*4)
		for _, s := range n {
			wg.Go(func() {
				for range 4 {
					ctx, cancel := context.WithTimeout(bg, within)
					err := s.Lock(ctx, "contended")
					cancel()
					if err != nil {
						errs <- err
						return
					}
					if v := inside.Add(1); v > max.Load() {
						max.Store(v)
					}
					time.Sleep(2 * time.Millisecond)
					inside.Add(-1)
					if err := s.Unlock(bg, "contended"); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if m := max.Load(); m != 1 {
			t.Fatalf("%d holders at once, want 1", m)
		}
	})

	t.Run("ContextCancellation", func(t *testing.T) {
		n := nodes(t, 2)
		a, b := n[0], n[1]
		if err := a.Lock(bg, "held"); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = a.Unlock(bg, "held") }()
		ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- b.Lock(ctx, "held") }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("b.Lock succeeded while a holds the lock")
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("b.Lock with an expired context: %v, want context.DeadlineExceeded", err)
			}
		case <-time.After(within):
			t.Fatal("b.Lock ignored its context")
		}
	})

	t.Run("TryLock", func(t *testing.T) {
		n := nodes(t, 2)
		a, ok1 := n[0].(certmagic.TryLocker)
		b, ok2 := n[1].(certmagic.TryLocker)
		if !ok1 || !ok2 {
			t.Logf("%T does not implement TryLocker; checked nothing", n[0])
			return
		}
		if ok, err := a.TryLock(bg, "ari_1"); !ok || err != nil {
			t.Fatalf("a.TryLock of a free lock = %v, %v", ok, err)
		}
		if ok, err := b.TryLock(bg, "ari_1"); ok || err != nil {
			t.Fatalf("b.TryLock of a held lock = %v, %v; want false, nil", ok, err)
		}
		if err := a.Unlock(bg, "ari_1"); err != nil {
			t.Fatal(err)
		}
		if ok, err := b.TryLock(bg, "ari_1"); !ok || err != nil {
			t.Fatalf("b.TryLock after a.Unlock = %v, %v", ok, err)
		}
		if err := b.Unlock(bg, "ari_1"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("UnlockOnlyOwnLock", func(t *testing.T) {
		if opts.UnownedUnlock {
			t.Logf("declared: Unlock releases another instance's lock")
			return
		}
		n := nodes(t, 3)
		a, b, c := n[0], n[1], n[2]
		if err := a.Lock(bg, "mine"); err != nil {
			t.Fatal(err)
		}
		_ = b.Unlock(bg, "mine") // may return an error; must not release a's lock
		ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
		defer cancel()
		if err := c.Lock(ctx, "mine"); err == nil {
			t.Fatal("another node's Unlock released the lock")
		}
		if err := a.Unlock(context.WithoutCancel(bg), "mine"); err != nil {
			t.Fatalf("a.Unlock with a never-cancelled context: %v", err)
		}
		ctx2, cancel2 := context.WithTimeout(bg, within)
		defer cancel2()
		if err := c.Lock(ctx2, "mine"); err != nil {
			t.Fatalf("c.Lock after the owner's Unlock: %v", err)
		}
		if err := c.Unlock(bg, "mine"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("RenewLockLease", func(t *testing.T) {
		n := nodes(t, 2)
		a, ok1 := n[0].(certmagic.LockLeaseRenewer)
		b, ok2 := n[1].(certmagic.LockLeaseRenewer)
		if !ok1 || !ok2 {
			t.Logf("%T does not implement LockLeaseRenewer; checked nothing", n[0])
			return
		}
		lease := opts.Lease
		if lease == 0 {
			lease = time.Minute
		}
		if err := n[0].Lock(bg, "renew"); err != nil {
			t.Fatal(err)
		}
		if err := a.RenewLockLease(bg, "renew", lease); err != nil {
			t.Fatalf("RenewLockLease by the holder: %v", err)
		}
		if err := b.RenewLockLease(bg, "renew", lease); err == nil {
			t.Fatal("RenewLockLease by a node that does not hold the lock succeeded")
		}
		if err := n[0].Unlock(bg, "renew"); err != nil {
			t.Fatal(err)
		}
		if err := a.RenewLockLease(bg, "renew", lease); err == nil {
			t.Fatal("RenewLockLease of a released lock succeeded")
		}
	})

	if opts.Lease > 0 {
		t.Run("HeldPastLease", func(t *testing.T) {
			n := nodes(t, 2)
			a, b := n[0], n[1]
			if err := a.Lock(bg, "long"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(opts.Lease * 3 / 2)
			ctx, cancel := context.WithTimeout(bg, opts.Lease/2)
			defer cancel()
			if err := b.Lock(ctx, "long"); err == nil {
				t.Fatal("b took the lock while a, alive, still holds it past one lease: the lease is not refreshed")
			}
			if err := a.Unlock(bg, "long"); err != nil {
				t.Fatal(err)
			}
		})
	}

	if opts.Crash != nil && opts.Lease > 0 {
		t.Run("CrashedHolderTakenOver", func(t *testing.T) {
			n := nodes(t, 2)
			a, b := n[0], n[1]
			if err := a.Lock(bg, "crash"); err != nil {
				t.Fatal(err)
			}
			opts.Crash(a)
			ctx, cancel := context.WithTimeout(bg, 3*opts.Lease+within)
			defer cancel()
			start := time.Now()
			if err := b.Lock(ctx, "crash"); err != nil {
				t.Fatalf("b.Lock of a crashed holder's lock: %v", err)
			}
			t.Logf("taken over %s after the holder crashed (lease %s)", time.Since(start).Round(time.Millisecond), opts.Lease)
			if err := b.Unlock(bg, "crash"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// ManyLoader is the optional batch read the acme app's renewal scan uses
// (caddyacme.ManyLoader): values[i] and errs[i] are keys[i]'s.
type ManyLoader interface {
	LoadMany(ctx context.Context, keys []string) (values [][]byte, errs []error)
}

func isManyLoader(s certmagic.Storage) bool {
	_, ok := s.(ManyLoader)
	return ok
}

// testLoadMany checks that a storage's LoadMany, if it has one, answers
// exactly as Load does key by key: values, missing keys, directories,
// repeated keys and an empty batch.
func testLoadMany(t *testing.T, s certmagic.Storage) {
	ml := s.(ManyLoader)
	ctx := t.Context()
	store(t, s, "many/a", []byte("value a"))
	store(t, s, "many/dir/b", []byte{0, 1, 2, 255})
	store(t, s, "many/empty", []byte{})
	keys := []string{"many/a", "many/missing", "many/dir", "many/dir/b", "many/a", "many/empty", "other/missing"}
	values, errs := ml.LoadMany(ctx, keys)
	if len(values) != len(keys) || len(errs) != len(keys) {
		t.Fatalf("LoadMany of %d keys returned %d values and %d errors", len(keys), len(values), len(errs))
	}
	for i, key := range keys {
		want, wantErr := s.Load(ctx, key)
		switch {
		case wantErr != nil:
			if errs[i] == nil {
				t.Errorf("LoadMany %s: value %q, Load says %v", key, values[i], wantErr)
			} else if errors.Is(wantErr, fs.ErrNotExist) != errors.Is(errs[i], fs.ErrNotExist) {
				t.Errorf("LoadMany %s: %v; Load: %v", key, errs[i], wantErr)
			}
		case errs[i] != nil:
			t.Errorf("LoadMany %s: %v; Load gives %q", key, errs[i], want)
		case !bytes.Equal(values[i], want):
			t.Errorf("LoadMany %s = %q, Load = %q", key, values[i], want)
		}
	}
	if values, errs := ml.LoadMany(ctx, nil); len(values) != 0 || len(errs) != 0 {
		t.Errorf("LoadMany of no keys = %d values, %d errors", len(values), len(errs))
	}
}
