package redis

import (
	"bytes"
	"context"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// rawBench measures the raw go-redis round trips the storage's operations
// are compared with (BENCHMARKS.md): SET and GET of the 1 KiB value that
// storagetest.Bench stores. It runs before and after the storage's
// benchmarks (name "Raw" and "RawAfter"), so that a drift of the machine
// during the run shows.
func rawBench(b *testing.B, name string, get func(ctx context.Context, key string) error, set func(ctx context.Context, key string, value []byte) error) {
	ctx := context.Background()
	value := bytes.Repeat([]byte("0123456789abcdef"), 64)
	b.Run(name+"/SET", func(b *testing.B) {
		storagetest.Timed(b, func() error { return set(ctx, "bench:raw", value) })
	})
	b.Run(name+"/GET", func(b *testing.B) {
		storagetest.Timed(b, func() error { return get(ctx, "bench:raw") })
	})
}

// BenchmarkStandalone runs storagetest.Bench against a standalone Redis,
// with the raw driver's GET and SET on the same server before and after.
func BenchmarkStandalone(b *testing.B) {
	r := testenv.StartRedis(b, testenv.RedisOptions{})
	c := r.Client(b)
	get := func(ctx context.Context, k string) error { return c.Get(ctx, k).Err() }
	set := func(ctx context.Context, k string, v []byte) error { return c.Set(ctx, k, v, 0).Err() }
	rawBench(b, "Raw", get, set)
	storagetest.Bench(b, opener(func() *Storage { return &Storage{Addresses: []string{r.Addr}} }))
	rawBench(b, "RawAfter", get, set)
}

// BenchmarkCluster does the same against a Redis Cluster of three masters.
func BenchmarkCluster(b *testing.B) {
	cl := testenv.StartRedisCluster(b)
	c := cl.Client(b)
	get := func(ctx context.Context, k string) error { return c.Get(ctx, k).Err() }
	set := func(ctx context.Context, k string, v []byte) error { return c.Set(ctx, k, v, 0).Err() }
	rawBench(b, "Raw", get, set)
	storagetest.Bench(b, opener(func() *Storage { return &Storage{Addresses: cl.Addrs} }))
	rawBench(b, "RawAfter", get, set)
}

// BenchmarkPaired alternates each storage operation with the raw go-redis
// command it is compared with, on the same standalone server
// (storagetest.Paired).
// Store-vs-SET stores into directories written moments before (as certmagic
// stores a certificate, its key and its metadata), StoreNewDirs-vs-SET into
// new ones. Store-vs-Writes and StoreNewDirs-vs-Writes compare the same
// Stores with their writes alone (rawWrites: the index fields and the
// value's hash in one MULTI/EXEC, no conflict check), the floor of a Store
// that keeps the index. List-vs-HKEYS lists a directory of 10 files (HKEYS
// reads a 10-field hash); ListAfterChurn lists it again after 2 000 more
// files were stored into it and deleted. Delete-vs-DEL deletes a file stored
// (untimed) just before, as DEL deletes a key SET just before.
func BenchmarkPaired(b *testing.B) {
	ctx := context.Background()
	r := testenv.StartRedis(b, testenv.RedisOptions{})
	c := r.Client(b)
	s := open(b, func() *Storage { return &Storage{Addresses: []string{r.Addr}} }, "paired")
	value := bytes.Repeat([]byte("0123456789abcdef"), 64)
	if err := s.Store(ctx, "bench/load/key", value); err != nil {
		b.Fatal(err)
	}
	if err := c.Set(ctx, "bench:raw", value, 0).Err(); err != nil {
		b.Fatal(err)
	}
	for j := range 10 {
		if err := s.Store(ctx, "bench/list/"+strconv.Itoa(j), value); err != nil {
			b.Fatal(err)
		}
		if err := c.HSet(ctx, "bench:rawdir", strconv.Itoa(j), "1").Err(); err != nil {
			b.Fatal(err)
		}
	}
	list := func() error {
		keys, err := s.List(ctx, "bench/list", false)
		if err == nil && len(keys) != 10 {
			b.Fatalf("List = %d keys, want 10", len(keys))
		}
		return err
	}
	hkeys := func() error { return c.HKeys(ctx, "bench:rawdir").Err() }
	i, churned := 0, false
	storagetest.Paired(b, []storagetest.Pair{
		{
			Name:    "Store-vs-SET",
			Raw:     func() error { return c.Set(ctx, "bench:raw", value, 0).Err() },
			Storage: func() error { i++; return s.Store(ctx, "bench/store/"+strconv.Itoa(i%64), value) },
		},
		{
			Name:    "Store-vs-Writes",
			Raw:     func() error { i++; return rawWrites(ctx, s, "bench/store/"+strconv.Itoa(i%64), value) },
			Storage: func() error { i++; return s.Store(ctx, "bench/store/"+strconv.Itoa(i%64), value) },
		},
		{
			Name:    "StoreNewDirs-vs-Writes",
			Raw:     func() error { i++; return rawWrites(ctx, s, "bench/rawnew"+strconv.Itoa(i)+"/x/key", value) },
			Storage: func() error { i++; return s.Store(ctx, "bench/new"+strconv.Itoa(i)+"/x/key", value) },
		},
		// a key in new directories: its script creates their indexes
		{
			Name:    "StoreNewDirs-vs-SET",
			Raw:     func() error { return c.Set(ctx, "bench:raw", value, 0).Err() },
			Storage: func() error { i++; return s.Store(ctx, "bench/new"+strconv.Itoa(i)+"/x/key", value) },
		},
		{
			Name:    "Load-vs-GET",
			Raw:     func() error { return c.Get(ctx, "bench:raw").Err() },
			Storage: func() error { _, err := s.Load(ctx, "bench/load/key"); return err },
		},
		{
			Name:    "Stat-vs-GET",
			Raw:     func() error { return c.Get(ctx, "bench:raw").Err() },
			Storage: func() error { _, err := s.Stat(ctx, "bench/load/key"); return err },
		},
		{Name: "List-vs-HKEYS", Raw: hkeys, Storage: list},
		{
			Name: "Delete-vs-DEL",
			Setup: func() error {
				if err := c.Set(ctx, "bench:raw:del", value, 0).Err(); err != nil {
					return err
				}
				return s.Store(ctx, "bench/delete/key", value)
			},
			Raw:     func() error { return c.Del(ctx, "bench:raw:del").Err() },
			Storage: func() error { return s.Delete(ctx, "bench/delete/key") },
		},
		{
			Name: "ListAfterChurn-vs-HKEYS",
			Setup: func() error {
				if churned {
					return nil
				}
				churned = true
				for j := range 2000 {
					k := "bench/list/churn" + strconv.Itoa(j)
					if err := s.Store(ctx, k, value); err != nil {
						return err
					}
					if err := s.Delete(ctx, k); err != nil {
						return err
					}
				}
				return nil
			},
			Raw:     hkeys,
			Storage: list,
		},
	})
}

// rawWrites makes the writes of s's Store of key (see storeWrite): an
// index field in each directory above it and its value's hash, in one
// MULTI/EXEC, without Store's conflict check or sealing.
func rawWrites(ctx context.Context, s *Storage, key string, value []byte) error {
	now := time.Now()
	_, err := s.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		stamp := "+" + strconv.FormatInt(now.UnixMilli(), 10)
		for _, f := range indexFields(key) {
			p.HSet(ctx, s.indexKey(f.dir), f.field, stamp)
		}
		p.HSet(ctx, s.valueKey(key), fieldValue, value, fieldSize, len(value), fieldModified, now.UnixNano())
		return nil
	})
	return err
}
