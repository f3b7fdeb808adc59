package storagetest_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// TestFileStorage holds Caddy's default storage, certmagic's FileStorage, to
// the suite: the reference. Its Unlock deletes the lock file whoever holds
// it, and it has no lease to refresh or crash to simulate (a lock file goes
// stale 10s after its last update). Its root directory is created first,
// as Caddy's data directory is (Caddy writes instance.uuid there at
// start): see TestFileStorageMissingRoot.
func TestFileStorage(t *testing.T) {
	root := t.TempDir()
	storagetest.Run(t, func(t testing.TB, namespace string) certmagic.Storage {
		dir := filepath.Join(root, namespace)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		return &certmagic.FileStorage{Path: dir}
	}, storagetest.Options{UnownedUnlock: true})
}

// TestFileStorageMissingRoot records the one case where the file storage
// answers differently from the suite's EmptyRoot: a root directory that was
// never created lists as fs.ErrNotExist. A storage on a server has no such
// state (an empty namespace and an emptied one are the same), so every
// caddy-acme storage answers as the file storage does for an existing,
// empty root: no keys, no error.
func TestFileStorageMissingRoot(t *testing.T) {
	s := &certmagic.FileStorage{Path: filepath.Join(t.TempDir(), "missing")}
	if _, err := s.List(context.Background(), "", true); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("List of a missing root: %v, want fs.ErrNotExist", err)
	}
}

func BenchmarkFileStorage(b *testing.B) {
	root := b.TempDir()
	storagetest.Bench(b, func(t testing.TB, namespace string) certmagic.Storage {
		return &certmagic.FileStorage{Path: filepath.Join(root, namespace)}
	})
}
