package storagetest

import (
	"errors"
	"io/fs"
	"testing"

	"github.com/caddyserver/certmagic"
)

// Known tells what node s remembers of key's version, for Overwrite:
// remembered, it has an entry; current, that entry is the version the
// server holds now.
type Known func(s certmagic.Storage, key string) (remembered, current bool)

// Overwrite drives a storage whose nodes overwrite a key they stored or
// loaded with one write conditional on the version they remember
// (backend.Known), through two nodes a and b sharing a namespace: a Store
// and a Load make the version known, an overwrite keeps it current; when
// b replaced the key, a's Store still succeeds (the full path); when b
// turned the key into a directory, a's Store is refused as over a
// directory, changes nothing, and a forgets the version. It does so for
// a key at the root and a key below directories.
func Overwrite(t *testing.T, a, b certmagic.Storage, known Known) {
	t.Helper()
	ctx := t.Context()
	current := func(s certmagic.Storage, key string) bool {
		_, c := known(s, key)
		return c
	}
	load := func(s certmagic.Storage, key, want string) {
		t.Helper()
		if got, err := s.Load(ctx, key); err != nil || string(got) != want {
			t.Fatalf("Load(%s) = %q, %v; want %q", key, got, err, want)
		}
	}
	// at the root, and below directories (the first Store's write then
	// checks them too)
	for _, k := range []string{"k", "top/sub/k"} {
		if err := a.Store(ctx, k, []byte("1")); err != nil || !current(a, k) {
			t.Fatalf("Store(%s): %v; version known: %v", k, err, current(a, k))
		}
		if err := a.Store(ctx, k, []byte("2")); err != nil || !current(a, k) {
			t.Fatalf("overwrite of %s: %v; version known: %v", k, err, current(a, k))
		}
		load(b, k, "2")
		if !current(b, k) {
			t.Fatalf("after a Load of %s, the node does not know the key's version", k)
		}

		// b replaces k: a's version is stale, its Store takes the full path
		if err := b.Store(ctx, k, []byte("3")); err != nil {
			t.Fatal(err)
		}
		if current(a, k) {
			t.Fatalf("a's version of %s should be stale", k)
		}
		if err := a.Store(ctx, k, []byte("4")); err != nil || !current(a, k) {
			t.Fatalf("Store of %s over another node's write: %v; version known: %v", k, err, current(a, k))
		}
		load(b, k, "4")

		// b turns k into a directory: a's Store of k is refused, as without
		// the conditional write, and changes nothing
		if err := b.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := b.Store(ctx, k+"/child", []byte("5")); err != nil {
			t.Fatal(err)
		}
		if err := a.Store(ctx, k, []byte("6")); !errors.Is(err, fs.ErrExist) {
			t.Fatalf("a's Store of %s over what is now a directory: %v, want the directory conflict", k, err)
		}
		load(a, k+"/child", "5")
		if remembered, _ := known(a, k); remembered {
			t.Fatalf("a still remembers the version of %s, gone", k)
		}
	}
}
