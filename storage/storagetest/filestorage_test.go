package storagetest_test

import (
	"path/filepath"
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// TestFileStorage holds Caddy's default storage, certmagic's FileStorage, to
// the suite: the reference. Its Unlock deletes the lock file whoever holds
// it, and it has no lease to refresh or crash to simulate (a lock file goes
// stale 10s after its last update).
func TestFileStorage(t *testing.T) {
	root := t.TempDir()
	storagetest.Run(t, func(t testing.TB, namespace string) certmagic.Storage {
		return &certmagic.FileStorage{Path: filepath.Join(root, namespace)}
	}, storagetest.Options{UnownedUnlock: true})
}

func BenchmarkFileStorage(b *testing.B) {
	root := b.TempDir()
	storagetest.Bench(b, func(t testing.TB, namespace string) certmagic.Storage {
		return &certmagic.FileStorage{Path: filepath.Join(root, namespace)}
	})
}
