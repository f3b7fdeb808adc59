package kong

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

const (
	testPassword = "hunter2-Pa55w0rd"
	testKey      = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
)

// TestProvisionErrors: each bad setting is reported naming its field, and
// no error shows the password, the DSN or the encryption key.
func TestProvisionErrors(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		name string
		s    *Storage
		want string
	}{
		{"dsn with host", &Storage{DSN: "postgres://u:" + testPassword + "@h/db", Host: "h"}, "dsn: cannot be combined with host"},
		{"dsn with kong port", &Storage{DSN: "host=h", PgPort: 5432}, "dsn: cannot be combined with port"},
		{"dsn unparsable", &Storage{DSN: "postgres://u:" + testPassword + "@h:notaport/db"}, "dsn: "},
		{"dsn bad key=value", &Storage{DSN: "host=h password='" + testPassword}, "dsn: "},
		{"dsn bad sslmode", &Storage{DSN: "postgres://u:" + testPassword + "@h/db?sslmode=bogus"}, "dsn: "},
		{"host and pg_host", &Storage{Host: "a", PgHost: "b"}, "pg_host: cannot be combined with its alias host"},
		{"password and pg_password", &Storage{Password: testPassword, PgPassword: testPassword}, "pg_password: cannot be combined"},
		{"port range", &Storage{Port: 70000}, "port: must be from 1 to 65535"},
		{"pg_port range", &Storage{PgPort: -1}, "pg_port: must be from 1 to 65535"},
		{"sslmode", &Storage{SSLMode: "strict"}, "sslmode: must be one of"},
		{"sslmode and pg_ssl", &Storage{SSLMode: "require", PgSSL: &yes}, "sslmode: cannot be combined with pg_ssl"},
		{"pg_ssl_verify without pg_ssl", &Storage{PgSSLVerify: &yes}, "pg_ssl_verify: needs pg_ssl"},
		{"pg_ssl_verify with pg_ssl off", &Storage{PgSSL: &no, PgSSLVerify: &yes}, "pg_ssl_verify: needs pg_ssl"},
		{"missing CA file", &Storage{Host: "h", SSLMode: "verify-full", SSLRootCert: "/nonexistent/ca.pem", Password: testPassword}, "unable to read CA file"},
		{"tls_server_name without TLS", &Storage{Host: "h", SSLMode: "disable", TLSServerName: "db"}, "tls_server_name: set, but sslmode is disable"},
		{"pool_size", &Storage{PoolSize: -1}, "pool_size: must be positive"},
		{"pg_timeout and connect_timeout", &Storage{PgTimeout: 1, ConnectTimeout: caddy.Duration(time.Second)}, "pg_timeout: cannot be combined"},
		{"unknown placeholder in password", &Storage{Password: "{env.CADDY_ACME_TEST_SURELY_UNSET}"}, "password: "},
		{"unknown placeholder in dsn", &Storage{DSN: "{env.CADDY_ACME_TEST_SURELY_UNSET}"}, "dsn: "},
		{"unknown placeholder in pg_password", &Storage{PgPassword: "{env.CADDY_ACME_TEST_SURELY_UNSET}"}, "pg_password: "},
		{"kong prefix", &Storage{KeyPrefix: "kong_acme:caddy"}, "key_prefix: must not start with \"kong_acme:\""},
		{"invalid prefix", &Storage{KeyPrefix: "a\x00b"}, "key_prefix: contains a NUL"},
		{"host with NUL", &Storage{Host: "a\x00"}, "host: contains a NUL"},
		{"short encryption key", &Storage{Options: backend.Options{EncryptionKey: "c2hvcnQ="}, Password: testPassword}, "encryption_key: "},
		{"lock_refresh", &Storage{Options: backend.Options{LockLease: caddy.Duration(time.Second), LockRefresh: caddy.Duration(time.Second)}}, "lock_refresh: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.s
			err := tryProvision(t, s)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Provision: %v; want an error containing %q", err, tt.want)
			}
			for _, secret := range []string{testPassword, testKey, "notaport/db"} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error shows a secret (%q): %v", secret, err)
				}
			}
		})
	}
}

// TestSecrets: a secret that fails placeholder expansion fails Provision
// naming its field, never showing a fragment of a literal value, and
// String never shows a secret. A DSN can carry a password, so it is one.
func TestSecrets(t *testing.T) {
	storagetest.Secrets(t, []storagetest.Secret{
		{Field: "dsn", Good: "postgres://kong:" + testPassword + "@db/kong", Module: func(v string) storagetest.Module {
			return &Storage{DSN: v}
		}},
		{Field: "password", Good: testPassword, Module: func(v string) storagetest.Module {
			return &Storage{Host: "db", Password: v}
		}},
		{Field: "pg_password", Good: testPassword, Module: func(v string) storagetest.Module {
			return &Storage{PgHost: "db", PgPassword: v}
		}},
		{Field: "encryption_key", Good: testKey, Module: func(v string) storagetest.Module {
			return &Storage{Host: "db", Options: backend.Options{EncryptionKey: v}}
		}},
	})
}

// TestProvisionOK: valid settings, including placeholders and every way to
// say TLS, provision without a server, and map as documented.
func TestProvisionOK(t *testing.T) {
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(testPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	yes, no := true, false
	tests := []struct {
		name   string
		s      *Storage
		check  func(t *testing.T, s *Storage)
		prefix string
	}{
		{name: "defaults", s: &Storage{Host: "db"}, prefix: "caddy/", check: func(t *testing.T, s *Storage) {
			cc := s.client.cfg.ConnConfig
			if cc.ConnectTimeout != defaultConnectTimeout || cc.RuntimeParams["application_name"] != "caddy-acme" || cc.RuntimeParams["timezone"] != "UTC" {
				t.Fatalf("ConnectTimeout %s, params %v", cc.ConnectTimeout, cc.RuntimeParams)
			}
		}},
		{name: "password from file", s: &Storage{Host: "db", Password: "{file." + pwFile + "}"}, prefix: "caddy/", check: func(t *testing.T, s *Storage) {
			if s.client.cfg.ConnConfig.Password != testPassword {
				t.Fatal("password placeholder not expanded")
			}
		}},
		{name: "dsn with password field", s: &Storage{DSN: "postgres://u:old@db/kong?connect_timeout=3", Password: testPassword}, prefix: "caddy/", check: func(t *testing.T, s *Storage) {
			cc := s.client.cfg.ConnConfig
			if cc.Password != testPassword || cc.ConnectTimeout != 3*time.Second || cc.Database != "kong" {
				t.Fatalf("password override, DSN connect_timeout, database: %v %s %q", cc.Password == testPassword, cc.ConnectTimeout, cc.Database)
			}
		}},
		{name: "kong names", s: &Storage{PgHost: "kdb", PgPort: 5433, PgUser: "kong", PgDatabase: "kongdb", PgSchema: "acme", PgSSL: &yes, PgTimeout: 1500, PoolSize: 3}, prefix: "caddy/", check: func(t *testing.T, s *Storage) {
			cfg := s.client.cfg
			cc := cfg.ConnConfig
			if cc.Host != "kdb" || cc.Port != 5433 || cc.User != "kong" || cc.Database != "kongdb" || cc.RuntimeParams["search_path"] != "acme" ||
				cc.ConnectTimeout != 1500*time.Millisecond || cfg.MaxConns != 3 {
				t.Fatalf("config %+v", cc)
			}
			if cc.TLSConfig == nil || len(cc.Fallbacks) != 0 {
				t.Fatal("pg_ssl on is not sslmode require (TLS, no plain-text fallback)")
			}
		}},
		{name: "pg_ssl off", s: &Storage{PgHost: "kdb", PgSSL: &no}, prefix: "caddy/", check: func(t *testing.T, s *Storage) {
			if s.client.cfg.ConnConfig.TLSConfig != nil {
				t.Fatal("pg_ssl off is not sslmode disable")
			}
		}},
		{name: "prefix gets a slash", s: &Storage{Host: "db", KeyPrefix: "team-a"}, prefix: "team-a/"},
		{name: "prefix keeps its slash", s: &Storage{Host: "db", KeyPrefix: "a/b/"}, prefix: "a/b/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.s
			provision(t, s)
			if s.prefix != tt.prefix {
				t.Fatalf("prefix %q, want %q", s.prefix, tt.prefix)
			}
			if tt.check != nil {
				tt.check(t, s)
			}
		})
	}
}

// TestSharedPool: storages with the same connection settings share one
// client whatever their key_prefix or encryption key; other settings get
// another; the last Cleanup closes it.
func TestSharedPool(t *testing.T) {
	a := provision(t, &Storage{Host: "db", User: "u", KeyPrefix: "a"})
	b := provision(t, &Storage{Host: "db", User: "u", KeyPrefix: "b", Options: backend.Options{EncryptionKey: testKey}})
	c := provision(t, &Storage{Host: "db", User: "v"})
	if a.client != b.client {
		t.Fatal("same connection settings, different clients")
	}
	if a.client == c.client {
		t.Fatal("different users share a client")
	}
	cl := a.client
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if cl.closed {
		t.Fatal("client closed while b still uses it")
	}
	if err := a.Cleanup(); err != nil { // idempotent: must not release b's use
		t.Fatal(err)
	}
	if err := b.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if !cl.closed {
		t.Fatal("client not closed after its last user's Cleanup")
	}
}

// TestStringRedacted: String (which certmagic logs) and the module's log
// encoding show where the data lives, never the password, the DSN's
// password or the encryption key.
func TestStringRedacted(t *testing.T) {
	cases := map[string]*Storage{
		"dsn": {DSN: "postgres://kong:" + testPassword + "@db.internal:6432/kong?sslmode=require", Options: backend.Options{EncryptionKey: testKey}},
		"fields": {
			Host: "db.internal", Port: 6432, User: "kong", Password: testPassword, Database: "kong",
			KeyPrefix: "prod", Options: backend.Options{EncryptionKey: testKey},
		},
		"kong": {PgHost: "db.internal", PgPassword: testPassword, Options: backend.Options{EncryptionKey: testKey}},
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			before := s.String()
			provision(t, s)
			after := s.String()
			var buf bytes.Buffer
			logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&buf), zap.DebugLevel))
			logger.Info("storage", zap.Any("storage", s))
			for _, text := range []string{before, after, buf.String()} {
				for _, secret := range []string{testPassword, testKey, "MDEyMzQ1"} {
					if strings.Contains(text, secret) {
						t.Fatalf("shows a secret: %s", text)
					}
				}
			}
			if !strings.Contains(after, "db.internal") || !strings.Contains(after, "aes-256-gcm") {
				t.Fatalf("String = %s; want the host and the encryption", after)
			}
			t.Log(after)
		})
	}
}

// TestJSON: the module's JSON keys are snake_case and the embedded options
// are inline.
func TestJSON(t *testing.T) {
	var s Storage
	in := `{"dsn":"postgres://db","key_prefix":"x","encryption_key":"k","lock_lease":30000000000,"pg_ssl":true}`
	if err := json.Unmarshal([]byte(in), &s); err != nil {
		t.Fatal(err)
	}
	if s.DSN != "postgres://db" || s.KeyPrefix != "x" || s.EncryptionKey != "k" || time.Duration(s.LockLease) != 30*time.Second || s.PgSSL == nil || !*s.PgSSL {
		t.Fatalf("%+v", &s)
	}
}

func TestModuleInfo(t *testing.T) {
	info := new(Storage).CaddyModule()
	if info.ID != "caddy.storage.acme_kong" {
		t.Fatal(info.ID)
	}
	if _, ok := info.New().(caddy.StorageConverter); !ok {
		t.Fatal("not a caddy.StorageConverter")
	}
}
