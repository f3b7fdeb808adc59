package kong

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	on, off := true, false
	tests := []struct {
		name    string
		input   string
		want    *Storage
		wantErr string
		// substring of the Provision error of the parsed module: the
		// Caddyfile parses, and the value is refused as in JSON
		provisionErr string
	}{
		{name: "empty", input: `acme_kong`, want: &Storage{}},
		{name: "empty block", input: "acme_kong {\n}", want: &Storage{}},
		{name: "inline dsn", input: `acme_kong postgres://kong@db/kong`, want: &Storage{DSN: "postgres://kong@db/kong"}},
		{name: "two inline args", input: `acme_kong a b`, wantErr: "wrong argument count"},
		{
			name: "every field",
			input: `acme_kong {
				dsn "host=db user=kong"
				host db.internal
				port 6432
				user kong
				password {env.KONG_PG_PASSWORD}
				database kong
				schema acme
				sslmode verify-full
				sslrootcert /etc/ssl/db-ca.pem
				sslcert /etc/ssl/client.pem
				sslkey /etc/ssl/client.key
				tls_server_name db.example.com
				connect_timeout 3s
				pool_size 8
				key_prefix caddy-prod
				encryption_key {file./etc/caddy/key}
				lock_lease 1m
				lock_refresh 10s
			}`,
			want: &Storage{
				DSN: "host=db user=kong", Host: "db.internal", Port: 6432, User: "kong", Password: "{env.KONG_PG_PASSWORD}",
				Database: "kong", Schema: "acme", SSLMode: "verify-full", SSLRootCert: "/etc/ssl/db-ca.pem",
				SSLCert: "/etc/ssl/client.pem", SSLKey: "/etc/ssl/client.key", TLSServerName: "db.example.com",
				ConnectTimeout: caddy.Duration(3 * time.Second), PoolSize: 8, KeyPrefix: "caddy-prod",
				Options: backend.Options{
					EncryptionKey: "{file./etc/caddy/key}",
					LockLease:     caddy.Duration(time.Minute),
					LockRefresh:   caddy.Duration(10 * time.Second),
				},
			},
		},
		{
			name: "kong names",
			input: `acme_kong {
				pg_host kong-db
				pg_port 5433
				pg_user kong
				pg_password secret
				pg_database kong
				pg_schema public
				pg_ssl on
				pg_ssl_verify off
				pg_ssl_cert /c.pem
				pg_ssl_cert_key /k.pem
				pg_timeout 5000
			}`,
			want: &Storage{
				PgHost: "kong-db", PgPort: 5433, PgUser: "kong", PgPassword: "secret", PgDatabase: "kong", PgSchema: "public",
				PgSSL: &on, PgSSLVerify: &off, PgSSLCert: "/c.pem", PgSSLCertKey: "/k.pem", PgTimeout: 5000,
			},
		},
		{name: "pg_ssl true", input: "acme_kong {\npg_ssl true\n}", want: &Storage{PgSSL: &on}},
		{name: "unknown", input: "acme_kong {\nhostname db\n}", wantErr: "unrecognized subdirective 'hostname'"},
		{name: "no tls block", input: "acme_kong {\ntls\n}", wantErr: "unrecognized subdirective 'tls'"},
		{name: "duplicate", input: "acme_kong {\nhost a\nhost b\n}", wantErr: "duplicate subdirective 'host'"},
		{name: "duplicate backend option", input: "acme_kong {\nlock_lease 1m\nlock_lease 2m\n}", wantErr: "duplicate subdirective 'lock_lease'"},
		{name: "inline and block dsn", input: "acme_kong postgres://a {\ndsn postgres://b\n}", wantErr: "duplicate subdirective 'dsn'"},
		{name: "missing arg", input: "acme_kong {\nhost\n}", wantErr: "wrong argument count"},
		{name: "extra arg", input: "acme_kong {\nhost a b\n}", wantErr: "wrong argument count"},
		{name: "extra arg number", input: "acme_kong {\nport 1 2\n}", wantErr: "wrong argument count"},
		{name: "extra arg bool", input: "acme_kong {\npg_ssl on off\n}", wantErr: "wrong argument count"},
		{name: "extra arg backend", input: "acme_kong {\nencryption_key a b\n}", wantErr: "wrong argument count"},
		{name: "bad port", input: "acme_kong {\nport 70000\n}", provisionErr: "port: must be from 1 to 65535, got 70000"},
		{name: "negative pg_port", input: "acme_kong {\npg_port -1\n}", provisionErr: "pg_port: must be from 1 to 65535, got -1"},
		{name: "zero port", input: "acme_kong {\nport 0\n}", wantErr: "port: expected a port from 1 to 65535"},
		{name: "port not a number", input: "acme_kong {\npg_port x\n}", wantErr: "pg_port: expected a port"},
		{name: "bad pool size", input: "acme_kong {\npool_size 0\n}", wantErr: "pool_size: expected a positive number"},
		{name: "negative pool size", input: "acme_kong {\npool_size -2\n}", provisionErr: "pool_size: must be positive, got -2"},
		{name: "zero pg_timeout", input: "acme_kong {\npg_timeout 0\n}", wantErr: "pg_timeout: expected a positive number"},
		{name: "negative pg_timeout", input: "acme_kong {\npg_timeout -5\n}", provisionErr: "pg_timeout: must be a positive number of milliseconds, got -5"},
		{name: "bad timeout", input: "acme_kong {\nconnect_timeout soon\n}", wantErr: "connect_timeout: expected a positive duration"},
		{name: "negative timeout", input: "acme_kong {\nconnect_timeout -1s\n}", provisionErr: "connect_timeout: must be positive, got -1s"},
		{name: "bad bool", input: "acme_kong {\npg_ssl_verify yes\n}", wantErr: "pg_ssl_verify: expected on or off"},
		{name: "bad lease", input: "acme_kong {\nlock_lease 0s\n}", wantErr: "lock_lease: expected a positive duration"},
		{name: "negative lease", input: "acme_kong {\nlock_lease -1m\n}", provisionErr: "lock_lease: must be positive, got -1m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Storage
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "Testfile:") {
					t.Fatalf("error %v has no file:line", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.provisionErr != "" {
				if err := tryProvision(t, &got); err == nil || !strings.Contains(err.Error(), tt.provisionErr) {
					t.Fatalf("Provision error %v, want one containing %q", err, tt.provisionErr)
				}
				return
			}
			gotJSON, _ := json.Marshal(&got)
			wantJSON, _ := json.Marshal(tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Fatalf("got  %s\nwant %s", gotJSON, wantJSON)
			}
		})
	}
}

// TestCaddyfileKeywordsAreJSONKeys: every Caddyfile subdirective is a JSON
// key of the module (house style 14), and every JSON key a subdirective.
func TestCaddyfileKeywordsAreJSONKeys(t *testing.T) {
	full := &Storage{
		DSN: "x", Host: "x", Port: 1, User: "x", Password: "x", Database: "x", Schema: "x", SSLMode: "x",
		SSLRootCert: "x", SSLCert: "x", SSLKey: "x", TLSServerName: "x", ConnectTimeout: 1, PoolSize: 1, KeyPrefix: "x",
		PgHost: "x", PgPort: 1, PgUser: "x", PgPassword: "x", PgDatabase: "x", PgSchema: "x", PgSSL: new(bool),
		PgSSLVerify: new(bool), PgSSLCert: "x", PgSSLCertKey: "x", PgTimeout: 1,
		Options: backend.Options{EncryptionKey: "x", LockLease: 1, LockRefresh: 1},
	}
	data, err := json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(data, &keys); err != nil {
		t.Fatal(err)
	}
	values := map[string]string{
		"port": "1", "pg_port": "1", "pool_size": "1", "pg_timeout": "1",
		"connect_timeout": "1s", "lock_lease": "1m", "lock_refresh": "1s", "pg_ssl": "on", "pg_ssl_verify": "on",
	}
	for key := range keys {
		v := values[key]
		if v == "" {
			v = "x"
		}
		var s Storage
		if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser("acme_kong {\n" + key + " " + v + "\n}")); err != nil {
			t.Errorf("JSON key %s is not a Caddyfile subdirective: %v", key, err)
		}
	}
}

// TestAdaptGlobalStorage: the module is registered and usable as Caddy's
// global storage in a Caddyfile.
func TestAdaptGlobalStorage(t *testing.T) {
	input := `{
	storage acme_kong postgres://kong@db/kong {
		password {env.KONG_PG_PASSWORD}
		key_prefix caddy-prod
		lock_lease 1m
	}
}
`
	adapter := caddyconfig.GetAdapter("caddyfile")
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
	want := `{"dsn":"postgres://kong@db/kong","key_prefix":"caddy-prod","lock_lease":60000000000,"module":"acme_kong","password":"{env.KONG_PG_PASSWORD}"}`
	if string(cfg.Storage) != want {
		t.Fatalf("storage\n%s\nwant\n%s", cfg.Storage, want)
	}
}
