package issuance

import (
	"strconv"
	"strings"
	"testing"
)

// TestCacheChangeLog: the log keeps the last MaxCacheChanges changes with
// increasing sequence numbers, and replaces an unreadable value (written by
// someone else) with a new log whose Trimmed mark makes every node compare
// everything it holds with storage.
func TestCacheChangeLog(t *testing.T) {
	const maxChanges = 20
	r := buildRuntime(t, noCA, nil, Options{MaxCacheChanges: maxChanges})
	l := r.changes
	ctx := t.Context()
	if _, err := l.sync(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range maxChanges + 5 {
		l.publish(ctx, "h"+strconv.Itoa(i)+".example.com", i%2 == 0)
	}
	log, err := l.load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(log.Changes) != maxChanges || log.Changes[0].Host != "h5.example.com" || log.Changes[0].Deleted || !log.Changes[1].Deleted {
		t.Fatalf("log holds %d changes from %+v, want the last %d", len(log.Changes), log.Changes[0], maxChanges)
	}
	for i := 1; i < len(log.Changes); i++ {
		if log.Changes[i].Seq <= log.Changes[i-1].Seq {
			t.Fatalf("sequence not increasing at %d: %d then %d", i, log.Changes[i-1].Seq, log.Changes[i].Seq)
		}
	}
	if log.Trimmed >= log.Changes[0].Seq || log.Seq != log.Changes[len(log.Changes)-1].Seq {
		t.Fatalf("trimmed %d, seq %d, first kept %d", log.Trimmed, log.Seq, log.Changes[0].Seq)
	}

	// a node that applied the log up to now has nothing to do
	if _, err := l.sync(ctx); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	seen := l.seen
	l.mu.Unlock()
	if seen != log.Seq {
		t.Fatalf("seen %d after a sync, want %d", seen, log.Seq)
	}

	// an unreadable log: syncing reports it and changes nothing; the next
	// change starts a new log above everything seen, marked as trimmed
	if err := r.storage.Store(ctx, CacheChangesKey, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.sync(ctx); err == nil || !strings.Contains(err.Error(), CacheChangesKey) {
		t.Fatalf("syncing an unreadable log: %v, want an error naming %s", err, CacheChangesKey)
	}
	l.publish(ctx, "after.example.com", false)
	log, err = l.load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(log.Changes) != 1 || log.Changes[0].Seq <= seen || log.Trimmed < seen {
		t.Fatalf("new log %+v, want one change above %d and trimmed at least %d", log, seen, seen)
	}
}
