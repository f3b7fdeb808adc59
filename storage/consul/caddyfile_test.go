package consul

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    string // JSON of the resulting Storage
		wantErr string
		// substring of the Provision error of the parsed module: the
		// Caddyfile parses, and the value is refused as in JSON
		provisionErr string
	}{
		{
			name:  "empty",
			input: `acme_consul`,
			want:  `{}`,
		},
		{
			name:  "empty block",
			input: "acme_consul {\n}",
			want:  `{}`,
		},
		{
			name: "everything",
			input: `acme_consul {
				address consul.internal:8501
				scheme https
				token {env.CONSUL_TOKEN}
				datacenter dc2
				namespace team-a
				partition part-1
				key_prefix kong/acme
				timeout 3s
				tls {
					ca_file /etc/consul/ca.pem
					server_name consul.internal
					insecure_skip_verify
					cert_file /etc/consul/client.pem
					key_file /etc/consul/client-key.pem
				}
				encryption_key {file./etc/caddy/key}
				lock_lease 1m
				lock_refresh 10s
			}`,
			want: `{"address":"consul.internal:8501","scheme":"https","token":"{env.CONSUL_TOKEN}","datacenter":"dc2",` +
				`"namespace":"team-a","partition":"part-1","key_prefix":"kong/acme",` +
				`"tls":{"ca_file":"/etc/consul/ca.pem","server_name":"consul.internal","insecure_skip_verify":true,` +
				`"cert_file":"/etc/consul/client.pem","key_file":"/etc/consul/client-key.pem"},` +
				`"timeout":3000000000,"encryption_key":"{file./etc/caddy/key}","lock_lease":60000000000,"lock_refresh":10000000000}`,
		},
		{
			name:  "empty tls block",
			input: "acme_consul {\n tls\n}",
			want:  `{"tls":{}}`,
		},
		{name: "argument after name", input: `acme_consul 127.0.0.1:8500`, wantErr: "wrong argument count"},
		{name: "address without argument", input: "acme_consul {\naddress\n}", wantErr: "wrong argument count"},
		{name: "address with two arguments", input: "acme_consul {\naddress a:1 b:2\n}", wantErr: "wrong argument count"},
		{name: "token with two arguments", input: "acme_consul {\ntoken a b\n}", wantErr: "wrong argument count"},
		{name: "duplicate", input: "acme_consul {\naddress a:1\naddress b:2\n}", wantErr: "duplicate subdirective 'address'"},
		{name: "duplicate shared option", input: "acme_consul {\nlock_lease 30s\nlock_lease 40s\n}", wantErr: "duplicate subdirective 'lock_lease'"},
		{name: "unknown", input: "acme_consul {\nkv_path /acme\n}", wantErr: "unrecognized subdirective 'kv_path'"},
		{name: "bad scheme", input: "acme_consul {\nscheme ftp\n}", provisionErr: `scheme: want http or https, got "ftp"`},
		{name: "bad timeout", input: "acme_consul {\ntimeout soon\n}", wantErr: "timeout: expected a positive duration"},
		{name: "zero timeout", input: "acme_consul {\ntimeout 0s\n}", wantErr: "timeout: expected a positive duration"},
		{name: "negative timeout", input: "acme_consul {\ntimeout -1s\n}", provisionErr: "timeout: must be positive, got -1s"},
		{name: "bad lock lease", input: "acme_consul {\nlock_lease forever\n}", wantErr: "lock_lease: expected a positive duration"},
		{name: "negative lock lease", input: "acme_consul {\nlock_lease -30s\n}", provisionErr: "lock_lease: must be positive, got -30s"},
		{name: "lock lease too short for consul", input: "acme_consul {\nlock_lease 10s\n}", provisionErr: "lock_lease: must be between 20s and 48h0m0s"},
		{name: "tls with argument", input: "acme_consul {\ntls on\n}", wantErr: "wrong argument count"},
		{name: "tls unknown", input: "acme_consul {\ntls {\nverify no\n}\n}", wantErr: "unrecognized subdirective 'verify'"},
		{name: "tls duplicate", input: "acme_consul {\ntls {\nca_file a\nca_file b\n}\n}", wantErr: "duplicate subdirective 'ca_file'"},
		{name: "tls flag with argument", input: "acme_consul {\ntls {\ninsecure_skip_verify yes\n}\n}", wantErr: "wrong argument count"},
		{name: "tls file without argument", input: "acme_consul {\ntls {\nca_file\n}\n}", wantErr: "wrong argument count"},
		{name: "duplicate tls", input: "acme_consul {\ntls\ntls\n}", wantErr: "duplicate subdirective 'tls'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Storage
			err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("UnmarshalCaddyfile: %v", err)
			}
			if tt.provisionErr != "" {
				if err := provision(t, &s); err == nil || !strings.Contains(err.Error(), tt.provisionErr) {
					t.Fatalf("Provision error = %v, want one containing %q", err, tt.provisionErr)
				}
				return
			}
			got, err := json.Marshal(&s)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestGlobalStorageOption adapts a Caddyfile using the module as Caddy's
// global storage.
func TestGlobalStorageOption(t *testing.T) {
	input := "{\n" +
		"\tstorage acme_consul {\n" +
		"\t\taddress consul.internal:8500\n" +
		"\t\ttoken {env.CONSUL_TOKEN}\n" +
		"\t\tkey_prefix kong/acme\n" +
		"\t\tlock_lease 1m\n" +
		"\t}\n" +
		"}\n"
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, warnings, err := adapter.Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	var cfg struct {
		Storage map[string]any `json:"storage"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"module": "acme_consul", "address": "consul.internal:8500", "token": "{env.CONSUL_TOKEN}", "key_prefix": "kong/acme", "lock_lease": float64(60e9)}
	if len(cfg.Storage) != len(want) {
		t.Fatalf("storage = %v, want %v", cfg.Storage, want)
	}
	for k, v := range want {
		if cfg.Storage[k] != v {
			t.Fatalf("storage[%q] = %v, want %v (storage %v)", k, cfg.Storage[k], v, cfg.Storage)
		}
	}
}
