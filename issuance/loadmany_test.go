package issuance

import (
	"context"
	"testing"

	"github.com/caddyserver/certmagic"
)

// batchStorage is a file storage that reads many keys at once.
type batchStorage struct{ *certmagic.FileStorage }

func (s batchStorage) LoadMany(ctx context.Context, keys []string) ([][]byte, []error) {
	return LoadParallel(ctx, s.FileStorage, keys)
}

// TestScanBatchesInFlight: the renewal scan reads its next batch while it
// checks one (renew.Scanner's default) on a storage with batch reads, and
// one batch at a time on a storage without (each batch is already
// LoadParallelism reads in flight), instrumented or not.
func TestScanBatchesInFlight(t *testing.T) {
	files := &certmagic.FileStorage{Path: t.TempDir()}
	for _, tc := range []struct {
		name    string
		storage certmagic.Storage
		want    int
	}{
		{"file system", files, 1},
		{"file system, instrumented", InstrumentStorage(files, "file_system"), 1},
		{"batch reads", batchStorage{files}, 0},
		{"batch reads, instrumented", InstrumentStorage(batchStorage{files}, "batch"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := buildRuntime(t, noCA, tc.storage, Options{})
			if got := r.scanner.BatchesInFlight; got != tc.want {
				t.Fatalf("BatchesInFlight = %d, want %d", got, tc.want)
			}
		})
	}
}
