package issuance

import (
	"context"
	"sync"

	"github.com/caddyserver/certmagic"
)

// ManyLoader is implemented by storages that load several keys in one
// round trip (a Redis pipeline, one SQL query). values[i] and errs[i] are
// keys[i]'s; a missing key's error wraps fs.ErrNotExist. The renewal scan
// reads certificates through it in batches, so that a scan of N
// certificates takes O(N/batch) round trips on such a storage.
type ManyLoader interface {
	LoadMany(ctx context.Context, keys []string) (values [][]byte, errs []error)
}

// LoadParallel is LoadMany for a storage without it: one Load per key,
// at most LoadParallelism at once.
func LoadParallel(ctx context.Context, s certmagic.Storage, keys []string) ([][]byte, []error) {
	values, errs := make([][]byte, len(keys)), make([]error, len(keys))
	sem := make(chan struct{}, LoadParallelism)
	var wg sync.WaitGroup
	for i, key := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			values[i], errs[i] = s.Load(ctx, key)
		})
	}
	wg.Wait()
	return values, errs
}

// LoadParallelism bounds the Loads of LoadParallel in flight.
const LoadParallelism = 16

// LoadMany loads keys from s in one batch when s can (ManyLoader), else
// with parallel Loads. values[i] and errs[i] are keys[i]'s.
func LoadMany(ctx context.Context, s certmagic.Storage, keys []string) ([][]byte, []error) {
	if ml, ok := s.(ManyLoader); ok {
		return ml.LoadMany(ctx, keys)
	}
	return LoadParallel(ctx, s, keys)
}

// batchReads reports whether s, or the storage it instruments, reads many
// keys in one batch (ManyLoader): LoadMany of a storage without is already
// LoadParallelism reads in flight.
func batchReads(s certmagic.Storage) bool {
	if w, ok := s.(interface{ Unwrap() certmagic.Storage }); ok {
		s = w.Unwrap()
	}
	_, ok := s.(ManyLoader)
	return ok
}
