package consul

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// BenchmarkConsul measures the storage (storagetest.Bench) and, on the same
// agent in the same run, the raw consul/api calls it is built on, so the
// figures compare:
//
//	go test ./storage/consul/ -run '^$' -bench . -benchtime 2000x
//
// Paired runs each storage operation and its raw counterpart back to back,
// which is the fair comparison on a busy machine.
func BenchmarkConsul(b *testing.B) {
	c := testenv.StartConsul(b, testenv.ConsulOptions{})
	b.Run("Storage", func(b *testing.B) {
		storagetest.Bench(b, opener(Storage{
			Address: c.Addr,
			Options: backend.Options{LockLease: caddy.Duration(testLease)},
		}))
	})
	b.Run("Raw", func(b *testing.B) {
		// The same client settings as the storage's (pooled transport).
		pc, err := newClient(connSettings{address: c.Addr, scheme: "http", timeout: defaultTimeout})
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Destruct()
		kv := pc.api.KV()
		value := bytes.Repeat([]byte("0123456789abcdef"), 64)
		prefix := "raw-bench/" + backend.Token()[:8] + "/"
		i := 0
		b.Run("Put", func(b *testing.B) {
			storagetest.Timed(b, func() error {
				i++
				_, err := kv.Put(&api.KVPair{Key: fmt.Sprintf("%sstore/%d", prefix, i%64), Value: changed(value, i)}, nil)
				return err
			})
		})
		b.Run("TxnSet", func(b *testing.B) { // what Store sends
			storagetest.Timed(b, func() error {
				i++
				ok, _, _, err := pc.api.Txn().Txn(api.TxnOps{
					{KV: &api.KVTxnOp{Verb: api.KVSet, Key: fmt.Sprintf("%stxn/%d", prefix, i%64), Value: changed(value, i)}},
				}, nil)
				if err == nil && !ok {
					err = fmt.Errorf("transaction rolled back")
				}
				return err
			})
		})
		if _, err := kv.Put(&api.KVPair{Key: prefix + "load", Value: value}, nil); err != nil {
			b.Fatal(err)
		}
		b.Run("Get", func(b *testing.B) {
			storagetest.Timed(b, func() error {
				p, _, err := kv.Get(prefix+"load", nil)
				if err == nil && p == nil {
					err = fmt.Errorf("missing")
				}
				return err
			})
		})
		for n := range 10 {
			if _, err := kv.Put(&api.KVPair{Key: fmt.Sprintf("%slist/dir/child%d", prefix, n), Value: value[:16]}, nil); err != nil {
				b.Fatal(err)
			}
		}
		b.Run("Keys", func(b *testing.B) {
			storagetest.Timed(b, func() error {
				keys, _, err := kv.Keys(prefix+"list/dir/", "/", nil)
				if err == nil && len(keys) != 10 {
					err = fmt.Errorf("listed %d keys", len(keys))
				}
				return err
			})
		})
	})
	// Paired: each iteration runs the storage operation and the raw call
	// it corresponds to back to back, so both see the same machine load;
	// ratio-p50 is storage p50 / raw p50.
	b.Run("Paired", func(b *testing.B) {
		s := opener(Storage{Address: c.Addr})(b, "paired-"+backend.Token()[:8])
		st := s.(*Storage)
		kv := st.client.KV()
		ctx := b.Context()
		value := bytes.Repeat([]byte("0123456789abcdef"), 64)
		for n := range 10 {
			if err := s.Store(ctx, fmt.Sprintf("list/dir/child%d", n), value[:16]); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.Store(ctx, "load", value); err != nil {
			b.Fatal(err)
		}
		i, j := 0, 0
		storagetest.Paired(b, []storagetest.Pair{
			{Name: "Store-vs-Put", Storage: func() error {
				i++
				return s.Store(ctx, fmt.Sprintf("store/%d", i%64), value)
			}, Raw: func() error {
				j++
				_, err := kv.Put(&api.KVPair{Key: fmt.Sprintf("%s/raw/%d", st.prefix, j%64), Value: changed(value, j)}, nil)
				return err
			}},
			// a key new to the node, in a new directory: the conflict
			// check, then the write (a raw PUT of a new key)
			{Name: "StoreNew-vs-Put", Storage: func() error {
				i++
				return s.Store(ctx, fmt.Sprintf("new/%d/crt", i), value)
			}, Raw: func() error {
				j++
				_, err := kv.Put(&api.KVPair{Key: fmt.Sprintf("%s/rawnew/%d", st.prefix, j), Value: value}, nil)
				return err
			}},
			{Name: "Load-vs-Get", Storage: func() error {
				_, err := s.Load(ctx, "load")
				return err
			}, Raw: func() error {
				_, _, err := kv.Get(st.prefix+"/load", nil)
				return err
			}},
			{Name: "Stat-vs-Get", Storage: func() error {
				_, err := s.Stat(ctx, "load")
				return err
			}, Raw: func() error {
				_, _, err := kv.Get(st.prefix+"/load", nil)
				return err
			}},
			{Name: "List-vs-Keys", Storage: func() error {
				_, err := s.List(ctx, "list/dir", false)
				return err
			}, Raw: func() error {
				_, _, err := kv.Keys(st.prefix+"/list/dir/", "/", nil)
				return err
			}},
			// a file stored (and a raw key put) just before
			{Name: "Delete-vs-Delete", Storage: func() error {
				return s.Delete(ctx, "delete/key")
			}, Raw: func() error {
				_, err := kv.Delete(st.prefix+"/raw/delete", nil)
				return err
			}, Setup: func() error {
				if _, err := kv.Put(&api.KVPair{Key: st.prefix + "/raw/delete", Value: value}, nil); err != nil {
					return err
				}
				return s.Store(ctx, "delete/key", value)
			}},
		})
	})
}

// changed returns value with its first bytes replaced by i: a raw write of
// the bytes a key already holds is a no-op for Consul (it skips the state
// store), while the storage's Store always changes the pair (its flags
// hold the modification time), so the raw writes must change it too.
func changed(value []byte, i int) []byte {
	v := bytes.Clone(value)
	copy(v, fmt.Sprintf("%016d", i))
	return v
}

// BenchmarkLoadMany compares, on one agent in one run, the ways the acme
// app's renewal scan can read 256 certificates: LoadMany (4 transactions
// of 64 keys), 256 sequential Loads, and 256 Loads with 16 in flight (the
// app's fallback for storages without LoadMany). ns/op is per batch of 256:
//
//	go test ./storage/consul/ -run '^$' -bench BenchmarkLoadMany -benchtime 20x
//
// Interleaved runs the three back to back in each iteration (in turn
// first), so all see the same machine load, and reports each one's median
// per batch.
func BenchmarkLoadMany(b *testing.B) {
	c := testenv.StartConsul(b, testenv.ConsulOptions{})
	s := opener(Storage{Address: c.Addr})(b, "loadmany-"+backend.Token()[:8]).(*Storage)
	ctx := b.Context()
	value := bytes.Repeat([]byte("0123456789abcdef"), 256) // 4 KiB: about a PEM chain
	keys := make([]string, 256)
	for i := range keys {
		keys[i] = fmt.Sprintf("certificates/acme-v02.example-directory/site%03d.example/site%03d.example.crt", i, i)
		if err := s.Store(ctx, keys[i], changed(value, i)); err != nil {
			b.Fatal(err)
		}
	}
	check := func(values [][]byte, errs []error) {
		for i := range keys {
			if errs[i] != nil || len(values[i]) != len(value) {
				b.Fatalf("%s: %d bytes, %v", keys[i], len(values[i]), errs[i])
			}
		}
	}
	sequential := func() ([][]byte, []error) {
		values, errs := make([][]byte, len(keys)), make([]error, len(keys))
		for i, key := range keys {
			values[i], errs[i] = s.Load(ctx, key)
		}
		return values, errs
	}
	ways := []struct {
		name string
		load func() ([][]byte, []error)
	}{
		{"LoadMany", func() ([][]byte, []error) { return s.LoadMany(ctx, keys) }},
		{"Sequential", sequential},
		// what the app does for a storage without LoadMany
		{"Parallel16", func() ([][]byte, []error) { return issuance.LoadParallel(ctx, s, keys) }},
	}
	for _, w := range ways {
		b.Run(w.name, func(b *testing.B) {
			for b.Loop() {
				check(w.load())
			}
			b.ReportMetric(float64(b.N*len(keys))/b.Elapsed().Seconds(), "keys/s")
		})
	}
	b.Run("Interleaved", func(b *testing.B) {
		times := make([][]time.Duration, len(ways))
		turn := 0
		for b.Loop() {
			for j := range ways {
				w := (turn + j) % len(ways)
				start := time.Now()
				check(ways[w].load())
				times[w] = append(times[w], time.Since(start))
			}
			turn++
		}
		for w, ts := range times {
			slices.Sort(ts)
			b.ReportMetric(float64(ts[len(ts)/2].Nanoseconds()), strings.ToLower(ways[w].name)+"-p50-ns")
		}
		b.ReportMetric(float64(times[2][len(times[2])/2])/float64(times[0][len(times[0])/2]), "parallel16/loadmany")
	})
}
