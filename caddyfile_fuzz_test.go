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
		"dns rfc2136 {\nkey_name k\nkey_alg hmac-sha256\nkey c2VjcmV0\nserver 127.0.0.1:53\n}\nresolvers 127.0.0.1:53\npropagation_timeout -1\ndns_ttl 1m",
		"disable_http_challenge\nalt_tlsalpn_port 8443\ndistributed false\npropagation_delay 5s",
		"wildcard_certificates\nprofile shortlived\nenable_ipv6 true\ndns_challenge_override_domain x.example",
		"fallback https://b.example/dir {\neab kid c2VjcmV0\ntrusted_roots /x.pem\nprofile tlsserver\n}\nfallback https://c.example/dir",
		"domains a.*.b\n", "eab\n", "storage\n", "tos_accepted yes please\n", "{\n}\n", "\"quoted {\" }",
		"dns\n", "fallback\n", "fallback https://b.example {\ndomains x\n}", "dns rfc2136 {\n", "alt_tlsalpn_port x",
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
