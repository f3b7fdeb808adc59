package kongcompat_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// FuzzAdapt feeds the adapter arbitrary input. It must never panic, and
// whatever it accepts must be JSON that decodes into a caddy.Config; an
// error comes without output.
func FuzzAdapt(f *testing.F) {
	inputs, _ := filepath.Glob(filepath.Join("testdata", "adapt", "*", "input.*"))
	for _, in := range inputs {
		if data, err := os.ReadFile(in); err == nil {
			f.Add(data)
		}
	}
	for _, seed := range []string{
		`{"name":"acme","config":{"account_email":"a@b","storage":"redis","storage_config":{"redis":{"host":"r","cluster_nodes":[{"ip":"10.0.0.1"}]}}}}`,
		"_format_version: \"3.0\"\nplugins:\n- name: acme\n  config: {account_email: \"${{ env \\\"DECK_X\\\" }}\", domains: [\"*.a.b\"]}\n",
		"_format_version: \"3.0\"\nplugins:\n- &p {name: acme, config: {account_email: a@b}}\n",
		"a: &a [*a]\n",
		`{"name":"acme","config":{"account_email":"a@b","storage":"redis","storage_config":{"redis":{"cluster_nodes":[],"sentinel_nodes":[]}}}}`,
		`{"data":[{"name":"acme","config":{"account_email":"{vault://env/x}"}}]}`,
	} {
		f.Add([]byte(seed))
	}
	for _, c := range hugeInputs() { // over the adapter's limits of values
		if len(c.body) <= 1<<20 {
			f.Add(c.body)
		}
	}
	env := map[string]string{"DECK_X": "x@example.com", "DECK_EMAIL": "ops@example.com", "DECK_DOMAIN": "a.example.com"}
	f.Fuzz(func(t *testing.T, body []byte) {
		var out []byte
		var err error
		done := make(chan struct{})
		go func() {
			defer close(done)
			out, _, err = mapEnv(env).Adapt(body, map[string]any{"filename": "fuzz.yml"})
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("no answer after 30s for %q", body)
		}
		if err != nil {
			if out != nil {
				t.Fatalf("output with an error: %v", err)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("accepted input gives invalid JSON:\n%s", out)
		}
		var cfg caddy.Config
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("output does not decode into caddy.Config: %v\n%s", err, out)
		}
		if cfg.AppsRaw["acme"] == nil {
			t.Fatalf("output has no acme app:\n%s", out)
		}
	})
}
