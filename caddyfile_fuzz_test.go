package caddyacme

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// FuzzCaddyfile feeds arbitrary bodies to the acme global option: adapting
// never panics, and whatever adapts is an acme app config with known fields
// only.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"account_email ops@example.com\ntos_accepted",
		"eab kid-1 c2VjcmV0\ndomains *.example.com example.* a.b.c",
		"storage file_system {\nroot /tmp/x\n}",
		"tos_accepted false\nallow_any_domain true\nenable_ipv4_common_name",
		"rsa_key_size 3072\ncert_type rsa\nfail_backoff_minutes 2.5\nrenew_threshold_days 0",
		"issue_timeout 1m30s\ncache_capacity 10\nhttp_port 8080",
		"domains a.*.b\n", "eab\n", "storage\n", "tos_accepted yes please\n", "{\n}\n", "\"quoted {\" }",
	} {
		f.Add(seed)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	f.Fuzz(func(t *testing.T, body string) {
		out, _, err := adapter.Adapt([]byte("{\n\tacme {\n"+body+"\n\t}\n}\n"), nil)
		if err != nil {
			return
		}
		var cfg struct {
			Apps map[string]json.RawMessage `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("adapted config is not JSON: %v", err)
		}
		raw, ok := cfg.Apps["acme"]
		if !ok {
			return // e.g. an empty body that adapts to nothing
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		var app App
		if err := dec.Decode(&app); err != nil {
			t.Fatalf("adapted acme app %s does not decode: %v", raw, err)
		}
	})
}
