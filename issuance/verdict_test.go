package issuance

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// TestBackoffOnlyWhenTheCARefuses: only an order the CA refused for the
// name (what the CA transport notes: a failed challenge, a rejected
// identifier) is a refusal; a failure before the order (the issue lock,
// storage), one whose context ended, or certmagic's cert_failed event
// alone (it also follows account errors and unreachable CAs) is not. The
// CA's side is shown end to end by the root package's
// TestBackoffAfterFailedValidation and the caclient tests.
func TestBackoffOnlyWhenTheCARefuses(t *testing.T) {
	r := buildRuntime(t, noCA, nil, Options{})
	refusal := func(ctx context.Context) error {
		ctx.Value(verdictKey{}).(*orderVerdict).at(r.caKey()).noteRefused("urn:ietf:params:acme:error:rejectedIdentifier")
		return errors.New("urn:ietf:params:acme:error:rejectedIdentifier")
	}
	v, err := watch(t.Context(), "lock.example.com", func(context.Context) error {
		return errors.New("unable to acquire lock 'issue_cert_lock.example.com': connection refused")
	})
	if err == nil || v.last().refused {
		t.Fatalf("failure before the order: %+v, err %v; want not refused", v, err)
	}
	v, err = watch(t.Context(), "ca.example.com", refusal)
	if last := v.last(); err == nil || !last.refused || last.reason != "urn:ietf:params:acme:error:rejectedIdentifier" || last.ca != r.caKey() {
		t.Fatalf("the CA's refusal: %+v, err %v; want the CA refused with its reason", v, err)
	}
	// certmagic's cert_failed alone (an account error, an unreachable CA)
	v, _ = watch(t.Context(), "acct.example.com", func(ctx context.Context) error {
		r.HandleEvent(ctx, "cert_failed", map[string]any{"identifier": "acct.example.com"})
		return errors.New("getting ACME account: urn:ietf:params:acme:error:accountDoesNotExist")
	})
	if v.last().refused {
		t.Fatal("cert_failed alone counted as the CA's refusal of the name")
	}
	if noteRenewed(t.Context(), "ca.example.com") {
		t.Fatal("a renewal outside any order found a verdict to mark")
	}
}

// lockRecorder is a storage that records the locks taken through it, and
// whether any operation ran while the test holds `busy` (inside an event
// callback).
type lockRecorder struct {
	certmagic.Storage

	mu    sync.Mutex
	locks []string
	busy  bool // the test is inside a callback
	ops   []string
}

func (s *lockRecorder) note(op string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy {
		s.ops = append(s.ops, op)
	}
}

func (s *lockRecorder) Lock(ctx context.Context, name string) error {
	s.mu.Lock()
	s.locks = append(s.locks, name)
	s.mu.Unlock()
	s.note("lock " + name)
	return s.Storage.Lock(ctx, name)
}

func (s *lockRecorder) Store(ctx context.Context, key string, v []byte) error {
	s.note("store " + key)
	return s.Storage.Store(ctx, key, v)
}

func (s *lockRecorder) Load(ctx context.Context, key string) ([]byte, error) {
	s.note("load " + key)
	return s.Storage.Load(ctx, key)
}

func (s *lockRecorder) taken() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.locks)
}

// TestIssueLockKeyIsCertmagics pins IssueLockKey to the lock certmagic
// takes while it orders a name (its private Config.lockKey): if certmagic
// renamed it, orderingElsewhere would probe a lock nobody holds. The order
// fails at the CA (nothing listens there), after certmagic took the lock.
func TestIssueLockKeyIsCertmagics(t *testing.T) {
	store := &lockRecorder{Storage: &certmagic.FileStorage{Path: t.TempDir()}}
	r := buildRuntime(t, noCA, store, Options{})
	for _, name := range []string{"a.example.com", "xn--bcher-kva.example", "127.0.0.1", "under_score.example.com"} {
		if err := r.magic.ObtainCertSync(t.Context(), name); err == nil {
			t.Fatalf("ordering %s from nowhere succeeded", name)
		}
		if !slices.Contains(store.taken(), IssueLockKey(name)) {
			t.Errorf("certmagic ordered %s under the locks %q, not %q", name, store.taken(), IssueLockKey(name))
		}
	}
}

// TestEventsTouchNoStorage: the event callback certmagic makes while it
// holds the issue lock does no storage operation. A renewal certmagic made
// on its own (no order of the runtime's in the context) is published to the
// other nodes from the change log's goroutine afterwards; one of the
// runtime's own renewals is published by the renewal, not by the callback.
func TestEventsTouchNoStorage(t *testing.T) {
	store := &lockRecorder{Storage: &certmagic.FileStorage{Path: t.TempDir()}}
	// not started yet: nothing but the callback can touch the storage
	r := buildRuntime(t, noCA, store, Options{CacheSyncInterval: time.Hour})
	callback := func(ctx context.Context, name string, data map[string]any) {
		store.mu.Lock()
		store.busy = true
		store.mu.Unlock()
		r.HandleEvent(ctx, name, data)
		store.mu.Lock()
		store.busy = false
		store.mu.Unlock()
	}

	// certmagic's maintenance renewed maint.example.com: published once the
	// runtime's goroutines run
	callback(t.Context(), "cert_obtaining", map[string]any{"identifier": "maint.example.com", "renewal": true})
	callback(t.Context(), "cert_obtained", map[string]any{"identifier": "maint.example.com", "renewal": true})
	r.Start()
	deadline := time.Now().Add(10 * time.Second)
	for {
		log, err := r.changes.load(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		r.changes.mu.Lock()
		primed := r.changes.primed
		r.changes.mu.Unlock()
		if primed && len(log.Changes) == 1 && log.Changes[0].Host == "maint.example.com" && !log.Changes[0].Deleted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the maintenance renewal was not published: %+v", log)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// a renewal the runtime runs: the callback marks the verdict only
	v, err := watch(t.Context(), "own.example.com", func(ctx context.Context) error {
		callback(ctx, "cert_obtained", map[string]any{"identifier": "own.example.com", "renewal": true})
		return nil
	})
	if err != nil || !v.renewed {
		t.Fatalf("watched renewal: %+v, %v; want renewed", v, err)
	}
	time.Sleep(100 * time.Millisecond) // the publisher would have run
	if log, _ := r.changes.load(t.Context()); len(log.Changes) != 1 {
		t.Fatalf("the callback of a watched renewal published it: %+v", log)
	}

	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.ops) != 0 {
		t.Fatalf("storage operations inside the event callback: %s", strings.Join(store.ops, ", "))
	}
}

// last returns the verdict of the CA the order reached last: the one
// that issued when it succeeded (zero when it reached none).
func (w watched) last() caWatched {
	if len(w.cas) == 0 {
		return caWatched{}
	}
	return w.cas[len(w.cas)-1]
}
