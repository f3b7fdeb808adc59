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
