package caddyacme

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// backend is a storage module config over a real server, in a namespace.
type backend struct {
	name string
	// start starts the server and returns a function giving the module's
	// JSON config over a namespace (a key prefix, path or directory).
	start func(t *testing.T) func(namespace string) map[string]any
}

func backends() []backend {
	return []backend{
		{"file_system", func(t *testing.T) func(string) map[string]any {
			root := t.TempDir()
			return func(ns string) map[string]any {
				return map[string]any{"module": "file_system", "root": filepath.Join(root, ns)}
			}
		}},
		{"acme_redis", func(t *testing.T) func(string) map[string]any {
			r := testenv.StartRedis(t, testenv.RedisOptions{})
			return func(ns string) map[string]any { return redisStorage(r, ns) }
		}},
		{"acme_kong", func(t *testing.T) func(string) map[string]any {
			pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
			return func(ns string) map[string]any {
				return map[string]any{"module": "acme_kong", "dsn": pg.DSN, "key_prefix": ns + "/"}
			}
		}},
		{"acme_consul", func(t *testing.T) func(string) map[string]any {
			c := testenv.StartConsul(t, testenv.ConsulOptions{})
			return func(ns string) map[string]any {
				return map[string]any{"module": "acme_consul", "address": c.Addr, "key_prefix": ns}
			}
		}},
		{"acme_vault", func(t *testing.T) func(string) map[string]any {
			v := testenv.StartVault(t, testenv.VaultOptions{})
			return func(ns string) map[string]any {
				return map[string]any{"module": "acme_vault", "address": v.Addr, "token": v.RootToken, "path_prefix": ns}
			}
		}},
	}
}

// redisStorage is the acme_redis config over the server r, in namespace ns.
func redisStorage(r *testenv.Redis, ns string) map[string]any {
	return map[string]any{"module": "acme_redis", "addresses": []string{r.Addr}, "key_prefix": ns + ":"}
}

// withLockLease returns a copy of the storage config with the lock lease
// set, for the acme_* modules (file_system has no such setting: its locks
// go stale 10s after their holder stops refreshing them). acme_consul's
// lease cannot be shorter than 20s (Consul's minimum session TTL, 10s, is
// half of it): it gets at least that.
func withLockLease(storage map[string]any, lease time.Duration) map[string]any {
	out := maps.Clone(storage)
	switch out["module"] {
	case "file_system":
		return out
	case "acme_consul":
		lease = max(lease, 20*time.Second)
	}
	out["lock_lease"] = lease.String()
	return out
}

// TestBackends runs the acme app with each storage backend as its storage
// (issue on the first handshake, a restarted Caddy serves the stored
// certificate without a new order), then round-trips the populated store
// through `caddy storage export` and `caddy storage import`.
func TestBackends(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			over := b.start(t)
			storage := over("e2e")

			r := newRig(t, testenv.PebbleOptions{})
			cfg := r.config(r.acme(map[string]any{"domains": []string{"backend.example.com"}, "storage": storage}), nil)
			r.load(cfg)
			first := r.mustHandshake("backend.example.com")
			if err := caddy.Stop(); err != nil {
				t.Fatal(err)
			}
			r.load(cfg)
			if second := r.mustHandshake("backend.example.com"); !second[0].Equal(first[0]) {
				t.Fatal("the restarted Caddy served another certificate")
			}
			if n := r.pebble.Orders(); n != 1 {
				t.Fatalf("orders = %d, want 1", n)
			}
			if err := caddy.Stop(); err != nil {
				t.Fatal(err)
			}

			// export the store the app populated, import it elsewhere
			dir := t.TempDir()
			archive := filepath.Join(dir, "export.tar")
			caddyCLI(t, writeConfig(t, dir, "from.json", storage), "storage", "export", "--output", archive)
			names := tarNames(t, archive)
			if !slices.ContainsFunc(names, func(n string) bool { return strings.HasSuffix(n, "/backend.example.com.crt") }) {
				t.Fatalf("export has no certificate: %q", names)
			}
			imported := over("e2e-imported")
			caddyCLI(t, writeConfig(t, dir, "to.json", imported), "storage", "import", "--input", archive)

			from, to := openStorage(t, storage), openStorage(t, imported)
			want := files(t, from)
			got := files(t, to)
			if len(want) == 0 || len(want) != len(names) {
				t.Fatalf("store has %d files, export %d", len(want), len(names))
			}
			for k, v := range want {
				if !bytes.Equal(got[k], v) {
					t.Fatalf("imported %s differs from the original", k)
				}
			}
			if len(got) != len(want) {
				t.Fatalf("imported %d files, want %d", len(got), len(want))
			}
		})
	}
}

// writeConfig writes a Caddy config whose global storage is storage.
func writeConfig(t *testing.T, dir, name string, storage map[string]any) string {
	t.Helper()
	data, err := json.Marshal(map[string]any{"storage": storage})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// caddyCLI runs the caddy command (this test binary re-executed as caddy's
// main) with --config file and args.
func caddyCLI(t *testing.T, config string, args ...string) {
	t.Helper()
	args = append(args, "--config", config)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("caddy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func tarNames(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}

// files returns every file (terminal key) of a storage with its value.
func files(t *testing.T, s certmagic.Storage) map[string][]byte {
	t.Helper()
	keys, err := s.List(t.Context(), "", true)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string][]byte)
	for _, k := range keys {
		info, err := s.Stat(t.Context(), k)
		if err != nil {
			t.Fatal(err)
		}
		if !info.IsTerminal {
			continue
		}
		if out[k], err = s.Load(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
