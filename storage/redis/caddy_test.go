package redis

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // the caddyfile adapter

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestAsCaddyGlobalStorage adapts a Caddyfile with the module as Caddy's
// global storage, loads the result as Caddy does, and uses it.
func TestAsCaddyGlobalStorage(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{Password: "pw"})
	input := "{\n\tstorage acme_redis " + r.Addr + " {\n\t\tpassword pw\n\t\tkey_prefix global:\n\t}\n}\n"
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("no caddyfile adapter")
	}
	out, warnings, err := adapter.Adapt([]byte(input), nil)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("adapt: %v %v", err, warnings)
	}
	var cfg struct {
		Storage json.RawMessage `json:"storage"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	want := `{"addresses":["` + r.Addr + `"],"key_prefix":"global:","module":"acme_redis","password":"pw"}`
	if string(cfg.Storage) != want {
		t.Fatalf("storage JSON = %s, want %s", cfg.Storage, want)
	}

	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	var fields map[string]any
	if err := json.Unmarshal(cfg.Storage, &fields); err != nil {
		t.Fatal(err)
	}
	delete(fields, "module") // the inline key, which Caddy strips too
	raw, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	mod, err := ctx.LoadModuleByID("caddy.storage.acme_redis", raw)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cms, err := mod.(caddy.StorageConverter).CertMagicStorage()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cms.Store(context.Background(), "k", []byte("v")); err != nil {
		cancel()
		t.Fatal(err)
	}
	if n, err := r.Client(t).Exists(context.Background(), "global:v:k").Result(); err != nil || n != 1 {
		t.Fatalf("value in Redis: %d, %v", n, err)
	}
	// Ending the config cleans the module up: its client is released.
	cancel()
	if err := cms.Store(context.Background(), "k", []byte("v")); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Store after the config ended: %v, want a closed client", err)
	}
}
