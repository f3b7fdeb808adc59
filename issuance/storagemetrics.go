package issuance

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
)

// InstrumentStorage returns inner wrapped so that every operation records
// its duration in caddy_acme_storage_operation_duration_seconds and its
// errors (fs.ErrNotExist is an answer, not an error) in
// caddy_acme_storage_errors_total, labelled with backend.
//
// The wrapper has exactly the optional interfaces inner has, so callers
// that type-assert them (certmagic for certmagic.LockLeaseRenewer, the
// renewal scan for certmagic.TryLocker) behave as with inner itself: hence
// one wrapper type per combination. Its cost is two clock reads and one
// histogram observation per operation; the observers are resolved here,
// once, not per call.
func InstrumentStorage(inner certmagic.Storage, backend string) certmagic.Storage {
	s := &instrumentedStorage{inner: inner, m: newStorageObservers(backend)}
	_, try := inner.(certmagic.TryLocker)
	_, lease := inner.(certmagic.LockLeaseRenewer)
	switch {
	case try && lease:
		return instrumentedTryLeaseStorage{s}
	case try:
		return instrumentedTryStorage{s}
	case lease:
		return instrumentedLeaseStorage{s}
	default:
		return s
	}
}

// storageOp is an operation of certmagic.Storage and its optional
// interfaces, the value of the operation label.
type storageOp int

const (
	opLoad storageOp = iota
	opStore
	opDelete
	opExists
	opList
	opStat
	opLock
	opUnlock
	opTryLock
	opRenewLockLease
	opLoadMany
	numStorageOps
)

var storageOpNames = [numStorageOps]string{
	opLoad:           "load",
	opStore:          "store",
	opDelete:         "delete",
	opExists:         "exists",
	opList:           "list",
	opStat:           "stat",
	opLock:           "lock",
	opUnlock:         "unlock",
	opTryLock:        "trylock",
	opRenewLockLease: "renew_lock_lease",
	opLoadMany:       "load_many",
}

// StorageOperations are the values of the operation label of the storage
// metrics, in a fixed order.
func StorageOperations() []string { return slices.Clone(storageOpNames[:]) }

// storageObservers are one backend's series, resolved once.
type storageObservers struct {
	duration [numStorageOps]prometheus.Observer
	errors   [numStorageOps]prometheus.Counter
}

func newStorageObservers(backend string) *storageObservers {
	m := new(storageObservers)
	for op, name := range storageOpNames {
		m.duration[op] = metrics.storageDuration.WithLabelValues(backend, name)
		m.errors[op] = metrics.storageErrors.WithLabelValues(backend, name)
	}
	return m
}

// instrumentedStorage is the wrapper for a storage that implements neither
// certmagic.TryLocker nor certmagic.LockLeaseRenewer, and the base of the
// others.
type instrumentedStorage struct {
	inner certmagic.Storage
	m     *storageObservers
}

// done records one operation that began at start.
func (s *instrumentedStorage) done(op storageOp, start time.Time, err error) {
	s.m.duration[op].Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.m.errors[op].Inc()
	}
}

// Store implements certmagic.Storage.
func (s *instrumentedStorage) Store(ctx context.Context, key string, value []byte) error {
	start := time.Now()
	err := s.inner.Store(ctx, key, value)
	s.done(opStore, start, err)
	return err
}

// Load implements certmagic.Storage. Within a certificate's load
// (certLoad), the Loads of its key, chain and metadata are one batch.
func (s *instrumentedStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if l := certLoadFrom(ctx); l != nil {
		if v, ok := l.load(ctx, s, key); ok {
			return v.value, v.err
		}
	}
	start := time.Now()
	value, err := s.inner.Load(ctx, key)
	s.done(opLoad, start, err)
	return value, err
}

// LoadMany implements ManyLoader: in one batch when the inner storage
// can (one load_many observation), else as parallel Loads (one load
// observation each).
func (s *instrumentedStorage) LoadMany(ctx context.Context, keys []string) ([][]byte, []error) {
	ml, ok := s.inner.(ManyLoader)
	if !ok {
		return LoadParallel(ctx, s, keys)
	}
	start := time.Now()
	values, errs := ml.LoadMany(ctx, keys)
	var err error
	for _, e := range errs {
		if e != nil && !errors.Is(e, fs.ErrNotExist) {
			err = e
			break
		}
	}
	s.done(opLoadMany, start, err)
	return values, errs
}

// Delete implements certmagic.Storage.
func (s *instrumentedStorage) Delete(ctx context.Context, key string) error {
	start := time.Now()
	err := s.inner.Delete(ctx, key)
	s.done(opDelete, start, err)
	return err
}

// Exists implements certmagic.Storage.
func (s *instrumentedStorage) Exists(ctx context.Context, key string) bool {
	start := time.Now()
	ok := s.inner.Exists(ctx, key)
	s.done(opExists, start, nil)
	return ok
}

// List implements certmagic.Storage.
func (s *instrumentedStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	start := time.Now()
	keys, err := s.inner.List(ctx, path, recursive)
	s.done(opList, start, err)
	return keys, err
}

// Stat implements certmagic.Storage.
func (s *instrumentedStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	start := time.Now()
	info, err := s.inner.Stat(ctx, key)
	s.done(opStat, start, err)
	return info, err
}

// Lock implements certmagic.Locker. Its duration includes the wait for
// another holder.
func (s *instrumentedStorage) Lock(ctx context.Context, name string) error {
	start := time.Now()
	err := s.inner.Lock(ctx, name)
	s.done(opLock, start, err)
	return err
}

// Unlock implements certmagic.Locker.
func (s *instrumentedStorage) Unlock(ctx context.Context, name string) error {
	start := time.Now()
	err := s.inner.Unlock(ctx, name)
	s.done(opUnlock, start, err)
	return err
}

// String is the inner storage's (storages redact their secrets there:
// certmagic logs the storage value).
func (s *instrumentedStorage) String() string {
	if str, ok := s.inner.(fmt.Stringer); ok {
		return str.String()
	}
	return fmt.Sprintf("%T", s.inner)
}

// Unwrap returns the storage being instrumented.
func (s *instrumentedStorage) Unwrap() certmagic.Storage { return s.inner }

func (s *instrumentedStorage) tryLock(ctx context.Context, name string) (bool, error) {
	start := time.Now()
	ok, err := s.inner.(certmagic.TryLocker).TryLock(ctx, name)
	s.done(opTryLock, start, err)
	return ok, err
}

func (s *instrumentedStorage) renewLockLease(ctx context.Context, name string, lease time.Duration) error {
	start := time.Now()
	err := s.inner.(certmagic.LockLeaseRenewer).RenewLockLease(ctx, name, lease)
	s.done(opRenewLockLease, start, err)
	return err
}

// instrumentedTryStorage wraps a storage that is a certmagic.TryLocker.
type instrumentedTryStorage struct{ *instrumentedStorage }

// TryLock implements certmagic.TryLocker.
func (s instrumentedTryStorage) TryLock(ctx context.Context, name string) (bool, error) {
	return s.tryLock(ctx, name)
}

// instrumentedLeaseStorage wraps a storage that is a
// certmagic.LockLeaseRenewer.
type instrumentedLeaseStorage struct{ *instrumentedStorage }

// RenewLockLease implements certmagic.LockLeaseRenewer.
func (s instrumentedLeaseStorage) RenewLockLease(ctx context.Context, name string, lease time.Duration) error {
	return s.renewLockLease(ctx, name, lease)
}

// instrumentedTryLeaseStorage wraps a storage that is both a
// certmagic.TryLocker and a certmagic.LockLeaseRenewer.
type instrumentedTryLeaseStorage struct{ *instrumentedStorage }

// TryLock implements certmagic.TryLocker.
func (s instrumentedTryLeaseStorage) TryLock(ctx context.Context, name string) (bool, error) {
	return s.tryLock(ctx, name)
}

// RenewLockLease implements certmagic.LockLeaseRenewer.
func (s instrumentedTryLeaseStorage) RenewLockLease(ctx context.Context, name string, lease time.Duration) error {
	return s.renewLockLease(ctx, name, lease)
}

// Interface guards
var (
	_ certmagic.Storage          = (*instrumentedStorage)(nil)
	_ ManyLoader                 = (*instrumentedStorage)(nil)
	_ certmagic.TryLocker        = instrumentedTryStorage{}
	_ certmagic.LockLeaseRenewer = instrumentedLeaseStorage{}
	_ certmagic.TryLocker        = instrumentedTryLeaseStorage{}
	_ certmagic.LockLeaseRenewer = instrumentedTryLeaseStorage{}
)
