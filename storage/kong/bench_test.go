package kong

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// BenchmarkKong measures the storage with storagetest.Bench and, on the
// same server in the same run, the raw pgx round trips it is compared
// with: a SELECT by key and an UPSERT of a 1 KiB value (Raw/…).
//
//	go test -run '^$' -bench BenchmarkKong -benchtime 2000x ./storage/kong/
func BenchmarkKong(b *testing.B) {
	ctx := context.Background()
	pg := testenv.StartPostgres(b, testenv.PostgresOptions{})
	value := bytes.Repeat([]byte("0123456789abcdef"), 64)

	// the table, created as the storage creates it
	s := newNode(b, pg.DSN, "raw-setup", 0)
	if err := s.Store(ctx, "x", value); err != nil {
		b.Fatal(err)
	}
	raw := rawPool(b, pg.DSN)
	if _, err := raw.Exec(ctx, `INSERT INTO acme_storage (id, key, value, created_at) VALUES (gen_random_uuid(), 'raw/load', $1, now())`, value); err != nil {
		b.Fatal(err)
	}
	rawOps := func(b *testing.B) {
		b.Run("Raw/Select", func(b *testing.B) {
			storagetest.Timed(b, func() error {
				var v []byte
				return raw.QueryRow(ctx, `SELECT value FROM acme_storage WHERE key = $1`, "raw/load").Scan(&v)
			})
		})
		b.Run("Raw/Upsert", func(b *testing.B) {
			i := 0
			storagetest.Timed(b, func() error {
				i++
				_, err := raw.Exec(ctx, `INSERT INTO acme_storage (id, key, value, created_at) VALUES (gen_random_uuid(), $1, $2, now())
ON CONFLICT (key) DO UPDATE SET value = excluded.value, created_at = excluded.created_at`, fmt.Sprintf("raw/store/%d", i%64), value)
				return err
			})
		})
	}
	rawOps(b)
	storagetest.Bench(b, func(t testing.TB, namespace string) certmagic.Storage {
		return newNode(t, pg.DSN, "bench/"+namespace, 0)
	})
	rawOps(b) // again, after: the server is as warm as for the storage
}

// BenchmarkKongInterleaved runs the raw round trips and the storage's
// operations on the same key alternately in one loop, so that a busy
// machine slows them alike: the p50/p99 ratios are the fair comparison
// (storagetest.Bench runs each operation in its own phase).
//
//	go test -run '^$' -bench BenchmarkKongInterleaved -benchtime 5000x ./storage/kong/
func BenchmarkKongInterleaved(b *testing.B) {
	ctx := context.Background()
	pg := testenv.StartPostgres(b, testenv.PostgresOptions{})
	s := newNode(b, pg.DSN, "ab", 0)
	value := bytes.Repeat([]byte("0123456789abcdef"), 64)
	if err := s.Store(ctx, "k", value); err != nil {
		b.Fatal(err)
	}
	for n := range 10 {
		if err := s.Store(ctx, fmt.Sprintf("dir/child%d", n), value); err != nil {
			b.Fatal(err)
		}
	}
	raw := rawPool(b, pg.DSN)
	ops := []struct {
		name string
		op   func() error
	}{
		{"raw-select", func() error {
			var v []byte
			return raw.QueryRow(ctx, `SELECT value FROM acme_storage WHERE key = $1`, "ab/k").Scan(&v)
		}},
		{"load", func() error { _, err := s.Load(ctx, "k"); return err }},
		{"stat", func() error { _, err := s.Stat(ctx, "k"); return err }},
		{"exists", func() error {
			if !s.Exists(ctx, "k") {
				return fmt.Errorf("Exists is false")
			}
			return nil
		}},
		{"raw-upsert", func() error {
			_, err := raw.Exec(ctx, `INSERT INTO acme_storage (id, key, value, created_at) VALUES (gen_random_uuid(), $1, $2, now())
ON CONFLICT (key) DO UPDATE SET value = excluded.value, created_at = excluded.created_at`, "ab/r", value)
			return err
		}},
		{"store", func() error { return s.Store(ctx, "s", value) }},
		// List of a directory of 10 files vs the range read of their keys
		{"raw-range", func() error {
			rows, err := raw.Query(ctx, `SELECT key FROM acme_storage WHERE key COLLATE "C" >= $1 AND key COLLATE "C" < $2`, "ab/dir/", "ab/dir0")
			if err != nil {
				return err
			}
			n := 0
			for rows.Next() {
				n++
			}
			if rows.Close(); n != 10 {
				return fmt.Errorf("range read %d keys", n)
			}
			return rows.Err()
		}},
		{"list", func() error {
			keys, err := s.List(ctx, "dir", false)
			if err == nil && len(keys) != 10 {
				err = fmt.Errorf("listed %d keys", len(keys))
			}
			return err
		}},
		// Delete of a file stored just before vs DELETE of a row inserted
		// just before (the inserts and the Store are timed as ops of their
		// own)
		{"raw-insert", func() error {
			_, err := raw.Exec(ctx, `INSERT INTO acme_storage (id, key, value, created_at) VALUES (gen_random_uuid(), $1, $2, now())`, "ab/rd", value)
			return err
		}},
		{"raw-delete", func() error {
			_, err := raw.Exec(ctx, `DELETE FROM acme_storage WHERE key = $1`, "ab/rd")
			return err
		}},
		{"store-to-delete", func() error { return s.Store(ctx, "d/key", value) }},
		{"delete", func() error { return s.Delete(ctx, "d/key") }},
	}
	times := make([][]time.Duration, len(ops))
	for b.Loop() {
		for i, o := range ops {
			start := time.Now()
			if err := o.op(); err != nil {
				b.Fatalf("%s: %v", o.name, err)
			}
			times[i] = append(times[i], time.Since(start))
		}
	}
	for i, o := range ops {
		ts := times[i]
		slices.Sort(ts)
		b.ReportMetric(float64(ts[len(ts)/2].Nanoseconds()), o.name+"-p50-ns")
		b.ReportMetric(float64(ts[len(ts)*99/100].Nanoseconds()), o.name+"-p99-ns")
	}
}
