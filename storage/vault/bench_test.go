package vault

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/vault/api"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// BenchmarkStorage measures the storage with storagetest.Bench and, on the
// same server in the same run, the raw vault/api KV v2 Put and Get of the
// same 1 KiB value (Put over 64 keys, as Bench's Store): once before Bench
// and once after, since the server's state (10 000 more keys, a warm heap)
// shifts its latency a little. For BENCHMARKS.md:
//
//	go test -run '^$' -bench . -benchtime 2000x ./storage/vault/
func BenchmarkStorage(b *testing.B) {
	v := testenv.StartVault(b, testenv.VaultOptions{})
	c, err := api.NewClient(&api.Config{Address: v.Addr})
	if err != nil {
		b.Fatal(err)
	}
	c.SetToken(v.RootToken)
	raw := func(name string) {
		kv := c.KVv2("secret")
		ctx := context.Background()
		value := map[string]any{"value": string(bytes.Repeat([]byte("0123456789abcdef"), 64))}
		b.Run(name+"/Put", func(b *testing.B) {
			i := 0
			storagetest.Timed(b, func() error {
				i++
				_, err := kv.Put(ctx, fmt.Sprintf("bench-raw/put/%d", i%64), value)
				return err
			})
		})
		if _, err := kv.Put(ctx, "bench-raw/get", value); err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/Get", func(b *testing.B) {
			storagetest.Timed(b, func() error {
				_, err := kv.Get(ctx, "bench-raw/get")
				return err
			})
		})
	}

	raw("RawKVv2Before")
	storagetest.Bench(b, func(b testing.TB, namespace string) certmagic.Storage {
		return newStorage(b, v, func(s *Storage) { s.PathPrefix = "bench/" + namespace })
	})
	raw("RawKVv2After")
}

// BenchmarkPaired runs each storage operation alternately with the raw
// vault/api KV v2 call it is compared with, on one server
// (storagetest.Paired):
//
//	go test -run '^$' -bench BenchmarkPaired -benchtime 1000x ./storage/vault/
func BenchmarkPaired(b *testing.B) {
	v := testenv.StartVault(b, testenv.VaultOptions{})
	c, err := api.NewClient(&api.Config{Address: v.Addr})
	if err != nil {
		b.Fatal(err)
	}
	c.SetToken(v.RootToken)
	kv := c.KVv2("secret")
	ctx := context.Background()
	s := newStorage(b, v, func(s *Storage) { s.PathPrefix = "paired" })
	value := bytes.Repeat([]byte("0123456789abcdef"), 64)
	raw := map[string]any{"value": string(value)}
	keys := []string{"load"}
	for n := range 10 {
		keys = append(keys, fmt.Sprintf("list/dir/child%d", n))
	}
	for _, k := range keys {
		if err := s.Store(ctx, k, value); err != nil {
			b.Fatal(err)
		}
		if _, err := kv.Put(ctx, "raw/"+k, raw); err != nil {
			b.Fatal(err)
		}
	}
	i, j := 0, 0
	get := func() error { _, err := kv.Get(ctx, "raw/load"); return err }
	storagetest.Paired(b, []storagetest.Pair{
		{Name: "Store-vs-Put", Storage: func() error {
			i++
			return s.Store(ctx, fmt.Sprintf("store/%d", i%64), value)
		}, Raw: func() error {
			j++
			_, err := kv.Put(ctx, fmt.Sprintf("raw/store/%d", j%64), raw)
			return err
		}},
		{Name: "Load-vs-Get", Storage: func() error { _, err := s.Load(ctx, "load"); return err }, Raw: get},
		{Name: "Stat-vs-Get", Storage: func() error { _, err := s.Stat(ctx, "load"); return err }, Raw: get},
		{Name: "List-vs-LIST", Storage: func() error {
			keys, err := s.List(ctx, "list/dir", false)
			if err == nil && len(keys) != 10 {
				err = fmt.Errorf("listed %d keys", len(keys))
			}
			return err
		}, Raw: func() error {
			_, err := c.Logical().ListWithContext(ctx, "secret/metadata/raw/list/dir")
			return err
		}},
		// a file stored (and a raw secret put) just before; the raw call
		// removes every version, as Delete does
		{Name: "Delete-vs-DeleteMetadata", Storage: func() error {
			return s.Delete(ctx, "delete/key")
		}, Raw: func() error {
			return kv.DeleteMetadata(ctx, "raw/delete")
		}, Setup: func() error {
			if _, err := kv.Put(ctx, "raw/delete", raw); err != nil {
				return err
			}
			return s.Store(ctx, "delete/key", value)
		}},
	})
}
