package redis

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestChurnLeavesNoIndex checks that on a standalone server a mass Delete
// leaves the index as small as the files left (no grace for fields the
// scripts wrote), and that deleting the last file of a directory removes
// the directory's field from the indexes above.
func TestChurnLeavesNoIndex(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	s := provision(t, &Storage{Addresses: []string{r.Addr}, KeyPrefix: "churn:"})
	c := r.Client(t)
	for i := range 10 {
		if err := s.Store(ctx, "certificates/ca/live"+strconv.Itoa(i)+"/crt", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2000 {
		k := "certificates/ca/gone" + strconv.Itoa(i)
		if err := s.Store(ctx, k+"/crt", []byte("x")); err != nil {
			t.Fatal(err)
		}
		// half by the file, half by its directory
		if i%2 == 1 {
			k += "/crt"
		}
		if err := s.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := c.HLen(ctx, "churn:d:certificates/ca").Result(); err != nil || n != 10 {
		t.Fatalf("index of certificates/ca has %d fields (%v) after the churn, want the 10 live ones", n, err)
	}
	keys, err := c.Keys(ctx, "churn:d:certificates/ca/gone*").Result()
	if err != nil || len(keys) != 0 {
		t.Fatalf("indexes of deleted directories left: %d (%v)", len(keys), err)
	}
	got, err := s.List(ctx, "certificates/ca", false)
	if err != nil || len(got) != 10 {
		t.Fatalf("List = %d keys, %v; want 10", len(got), err)
	}
	for i := range 10 {
		if err := s.Delete(ctx, "certificates/ca/live"+strconv.Itoa(i)+"/crt"); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		all, _ := c.Keys(ctx, "*").Result()
		t.Fatalf("after deleting every file, Redis still has %d keys (%v): %q", n, err, all)
	}
}

// TestAtomicBudget drives the scripts past their budget: a List of more
// children than a page and than the budget can check, a Stat and a Store
// over an index of thousands of dead fields, and a Delete of a tree larger
// than one script may remove. The results are those of the unbounded walk.
func TestAtomicBudget(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	s := provision(t, &Storage{Addresses: []string{r.Addr}, KeyPrefix: "budget:"})
	c := r.Client(t)

	// 1 500 directories of one file after five dead fields each: a dozen
	// checks per child, beyond one script's budget, over several pages
	var want []string
	if _, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i := range 1500 {
			k := "big/d" + strconv.Itoa(i)
			want = append(want, k)
			p.HSet(ctx, s.indexKey("big"), "d"+strconv.Itoa(i)+"/", "1") // not "+": checked
			p.HSet(ctx, s.indexKey(k), "x0", "+1", "x1", "+1", "x2", "+1", "x3", "+1", "x4", "+1", "f", "+1")
			p.HSet(ctx, s.valueKey(k+"/f"), fieldValue, "v", fieldSize, 1, fieldModified, 1)
		}
		p.HSet(ctx, s.indexKey(""), "big/", "+1")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	got, err := s.List(ctx, "big", false)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("List(big) = %d keys, %v; want %d", len(got), err, len(want))
	}

	// 3 000 dead fields (some written long ago without "+", some with it)
	// before the one live file, in a directory and in a key's stale index
	for _, dir := range []string{"stale", "was-a-dir"} {
		fields := make([]any, 0, 6000)
		for i := range 3000 {
			stamp := "1"
			if i%2 == 0 {
				stamp = "+" + strconv.FormatInt(time.Now().UnixMilli(), 10)
			}
			fields = append(fields, "gone"+strconv.Itoa(i), stamp)
		}
		if err := c.HSet(ctx, s.indexKey(dir), fields...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Store(ctx, "stale/live", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if info, err := s.Stat(ctx, "stale"); err != nil || info.IsTerminal {
		t.Fatalf("Stat(stale) = %+v, %v; want a directory", info, err)
	}
	if got, err := s.List(ctx, "stale", false); err != nil || !slices.Equal(got, []string{"stale/live"}) {
		t.Fatalf("List(stale) = %q, %v", got, err)
	}
	if n, err := c.HLen(ctx, s.indexKey("stale")).Result(); err != nil || n != 1 {
		t.Fatalf("index of stale has %d fields (%v) after List, want 1", n, err)
	}
	// a key whose old index names only dead files is not a directory
	if err := s.Store(ctx, "was-a-dir", []byte("now a file")); err != nil {
		t.Fatalf("Store over a dead index: %v", err)
	}
	if v, err := s.Load(ctx, "was-a-dir"); err != nil || string(v) != "now a file" {
		t.Fatalf("Load = %q, %v", v, err)
	}
	// but one with a live file below is
	if err := s.Store(ctx, "stale", []byte("x")); err == nil {
		t.Fatal("Store over a directory succeeded")
	}

	// a Delete of the 1 500 directories takes several scripts
	if err := s.Delete(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(ctx, "big", false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("List(big) after Delete: %v, want fs.ErrNotExist", err)
	}
	if keys, err := c.Keys(ctx, "budget:*big*").Result(); err != nil || len(keys) != 0 {
		t.Fatalf("%d keys of big left after Delete (%v)", len(keys), err)
	}
	if got, err := s.List(ctx, "", false); err != nil || !slices.Equal(got, []string{"stale", "was-a-dir"}) {
		t.Fatalf("List(root) = %q, %v", got, err)
	}
}

// TestDeleteFileScript: Delete's common case, a file, in one short
// script: the value and its field go, and the fields of the directories
// left empty above; a directory, a field another writer stamped and a
// field of a directory of the same name are left to the full script
// (-1), with nothing changed.
func TestDeleteFileScript(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	s := provision(t, &Storage{Addresses: []string{r.Addr}, KeyPrefix: "fast:"})
	c := r.Client(t)
	run := func(key string) int64 {
		t.Helper()
		dir, name := parentOf(key)
		n, err := deleteFileScript.Run(ctx, s.client, []string{s.indexKey(key), s.indexKey(dir), s.valueKey(key)}, name, dir, s.prefix).Int64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	all := func() []string {
		t.Helper()
		keys, err := c.Keys(ctx, "fast:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(keys)
		return keys
	}
	for _, k := range []string{"a/b/c/crt", "a/b/c/key", "a/x"} {
		if err := s.Store(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}

	before := all()
	if n := run("a/b"); n != -1 || !slices.Equal(all(), before) {
		t.Fatalf("a directory: %d, keys %q; want -1 and nothing changed (%q)", n, all(), before)
	}
	if n := run("a/b/c/crt"); n != 0 || s.Exists(ctx, "a/b/c/crt") {
		t.Fatalf("a file: %d, still there %v; want 0 and gone", n, s.Exists(ctx, "a/b/c/crt"))
	}
	if f, _ := c.HKeys(ctx, "fast:d:a/b/c").Result(); !slices.Equal(f, []string{"key"}) {
		t.Fatalf("index of a/b/c = %q after deleting crt, want [key]", f)
	}
	// the last file of a/b/c: a/b/c and a/b go from the indexes, a stays
	if n := run("a/b/c/key"); n != 0 {
		t.Fatalf("the last file of a directory: %d, want 0", n)
	}
	if want := []string{"fast:d:", "fast:d:a", "fast:v:a/x"}; !slices.Equal(all(), want) {
		t.Fatalf("keys after the last file of a/b/c: %q, want %q", all(), want)
	}
	if f, _ := c.HKeys(ctx, "fast:d:a").Result(); !slices.Equal(f, []string{"x"}) {
		t.Fatalf("index of a = %q, want [x]", f)
	}

	// a field of another writer (a stamp without "+"), and a file whose
	// name is also a directory's field: the full script's
	if err := c.HSet(ctx, "fast:d:a", "x", strconv.FormatInt(time.Now().UnixMilli(), 10)).Err(); err != nil {
		t.Fatal(err)
	}
	before = all()
	if n := run("a/x"); n != -1 || !slices.Equal(all(), before) {
		t.Fatalf("a field of another writer: %d, keys %q; want -1 and nothing changed", n, all())
	}
	if err := c.HSet(ctx, "fast:d:a", "x", "+1", "x/", "+1").Err(); err != nil {
		t.Fatal(err)
	}
	if n := run("a/x"); n != -1 || !s.Exists(ctx, "a/x") {
		t.Fatalf("a file beside a directory field of its name: %d; want -1 and the file kept", n)
	}
	if err := s.Delete(ctx, "a/x"); err != nil || s.Exists(ctx, "a/x") {
		t.Fatalf("Delete through the full script: %v, still there %v", err, s.Exists(ctx, "a/x"))
	}
}
