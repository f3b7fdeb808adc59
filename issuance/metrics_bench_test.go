package issuance

import (
	"context"
	"io/fs"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// BenchmarkStorageMetrics measures what the storage instrumentation adds to
// an operation: Load of a 1 KiB value from certmagic's FileStorage (Caddy's
// default storage), raw and wrapped, in the same run; and the same over a
// storage that does nothing (a map lookup), which isolates the wrapper's
// own cost (two clock reads and one histogram observation). The paired
// case alternates raw and instrumented FileStorage loads in one loop.
func BenchmarkStorageMetrics(b *testing.B) {
	ctx := b.Context()
	value := make([]byte, 1024)
	fileStorage := &certmagic.FileStorage{Path: b.TempDir()}
	if err := fileStorage.Store(ctx, benchKey, value); err != nil {
		b.Fatal(err)
	}
	nop := nopStorage{benchKey: value}
	for _, tc := range []struct {
		name string
		s    certmagic.Storage
	}{
		{"file_system/raw", fileStorage},
		{"file_system/instrumented", InstrumentStorage(fileStorage, "bench_file_system")},
		{"nop/raw", nop},
		{"nop/instrumented", InstrumentStorage(nop, "bench_nop")},
	} {
		b.Run("Load/"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tc.s.Load(ctx, benchKey); err != nil {
					b.Fatal(err)
				}
			}
		})
	}

	// raw and instrumented calls alternate, so that both see the same
	// machine load; each is timed on its own
	b.Run("Load/file_system/paired", func(b *testing.B) {
		wrapped := InstrumentStorage(fileStorage, "bench_file_system")
		var took [2]time.Duration
		i := 0
		for b.Loop() {
			s := certmagic.Storage(fileStorage)
			if i%2 == 1 {
				s = wrapped
			}
			start := time.Now()
			if _, err := s.Load(ctx, benchKey); err != nil {
				b.Fatal(err)
			}
			took[i%2] += time.Since(start)
			i++
		}
		half := float64(max(i/2, 1))
		b.ReportMetric(float64(took[0].Nanoseconds())/half, "raw-ns/load")
		b.ReportMetric(float64(took[1].Nanoseconds())/half, "instrumented-ns/load")
	})
}

const benchKey = "certificates/ca/host.example.com/host.example.com.crt"

// nopStorage is a read-only in-memory storage for measuring the wrapper
// alone.
type nopStorage map[string][]byte

func (s nopStorage) Load(_ context.Context, key string) ([]byte, error) {
	if v, ok := s[key]; ok {
		return v, nil
	}
	return nil, fs.ErrNotExist
}

func (nopStorage) Store(context.Context, string, []byte) error          { return nil }
func (nopStorage) Delete(context.Context, string) error                 { return nil }
func (nopStorage) Exists(context.Context, string) bool                  { return false }
func (nopStorage) Lock(context.Context, string) error                   { return nil }
func (nopStorage) Unlock(context.Context, string) error                 { return nil }
func (nopStorage) List(context.Context, string, bool) ([]string, error) { return nil, nil }
func (nopStorage) Stat(context.Context, string) (certmagic.KeyInfo, error) {
	return certmagic.KeyInfo{}, fs.ErrNotExist
}
