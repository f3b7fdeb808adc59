package consul

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
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

const secretToken = "9b1f0c2e-secret-token-never-shown"

func testKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// provision provisions s as Caddy would, and cleans it up after the test.
func provision(t testing.TB, s *Storage) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	err := s.Provision(ctx)
	t.Cleanup(func() {
		if err := s.Cleanup(); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
		cancel()
	})
	return err
}

func TestProvisionErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		s       Storage
		wantErr string
	}{
		{"address with scheme", Storage{Address: "https://consul:8500"}, "address: want host:port without a scheme"},
		{"address without port", Storage{Address: "consul"}, "address: want host:port"},
		{"address with bad port", Storage{Address: "consul:http"}, "address: invalid port"},
		{"bad scheme", Storage{Scheme: "ftp"}, "scheme: want http or https"},
		{"unset token placeholder", Storage{Token: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}"}, "token:"},
		{"unset address placeholder", Storage{Address: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}"}, "address:"},
		{"unset datacenter placeholder", Storage{Datacenter: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}"}, "datacenter:"},
		{"unset namespace placeholder", Storage{Namespace: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}"}, "namespace:"},
		{"unset partition placeholder", Storage{Partition: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}"}, "partition:"},
		{"root key prefix", Storage{KeyPrefix: "/"}, "key_prefix: must name a KV path"},
		{"tls over http", Storage{Scheme: "http", TLS: &backend.TLS{}}, "tls: needs scheme https"},
		{"cert without key", Storage{TLS: &backend.TLS{CertFile: "/x.pem"}}, "tls.cert_file, tls.key_file: set both or neither"},
		{"missing ca file", Storage{TLS: &backend.TLS{CAFile: filepath.Join(dir, "missing.pem")}}, "tls.ca_file:"},
		{"ca file without certificates", Storage{TLS: &backend.TLS{CAFile: notPEM}}, "tls.ca_file: no PEM certificate"},
		{"bad client pair", Storage{TLS: &backend.TLS{CertFile: notPEM, KeyFile: notPEM}}, "tls.cert_file, tls.key_file:"},
		{"unset ca file placeholder", Storage{TLS: &backend.TLS{CAFile: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}"}}, "tls.ca_file:"},
		{"negative timeout", Storage{Timeout: caddy.Duration(-time.Second)}, "timeout: must be positive"},
		{"lease too short for consul", Storage{Options: backend.Options{LockLease: caddy.Duration(10 * time.Second)}}, "lock_lease: must be between 20s and 48h0m0s"},
		{"lease too long for consul", Storage{Options: backend.Options{LockLease: caddy.Duration(72 * time.Hour)}}, "lock_lease: must be between"},
		{"refresh too slow for consul", Storage{Options: backend.Options{LockLease: caddy.Duration(30 * time.Second), LockRefresh: caddy.Duration(20 * time.Second)}}, "lock_refresh: must be at most half of lock_lease"},
		{"refresh longer than lease", Storage{Options: backend.Options{LockRefresh: caddy.Duration(time.Hour)}}, "lock_refresh:"},
		{"bad encryption key", Storage{Options: backend.Options{EncryptionKey: "c2hvcnQ="}}, "encryption_key:"},
		{"unset encryption key placeholder", Storage{Options: backend.Options{EncryptionKey: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}"}}, "encryption_key:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.s
			if s.Token == "" {
				s.Token = secretToken // must never show in an error
			}
			err := provision(t, &s)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Provision error = %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), secretToken) {
				t.Fatalf("Provision error shows the token: %v", err)
			}
		})
	}
}

// TestSecrets: a secret that fails placeholder expansion fails Provision
// naming its field, never showing a fragment of a literal value, and
// String never shows a secret.
func TestSecrets(t *testing.T) {
	storagetest.Secrets(t, []storagetest.Secret{
		{Field: "token", Good: secretToken, Module: func(v string) storagetest.Module {
			return &Storage{Token: v}
		}},
		{Field: "encryption_key", Good: testKey(t), Module: func(v string) storagetest.Module {
			return &Storage{Options: backend.Options{EncryptionKey: v}}
		}},
	})
}

func TestProvisionDefaultsAndNoNetwork(t *testing.T) {
	// Nothing listens on port 1: Provision must not notice.
	s := &Storage{Address: "127.0.0.1:1"}
	if err := provision(t, s); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if s.prefix != "caddy-acme" || s.conn.scheme != "http" || s.timeout != 10*time.Second {
		t.Fatalf("defaults: prefix %q, scheme %q, timeout %s", s.prefix, s.conn.scheme, s.timeout)
	}
	if s.rt.Lease != 30*time.Second || s.ttl != 15*time.Second || s.rt.Refresh != 10*time.Second {
		t.Fatalf("lock timing: lease %s, session TTL %s, refresh %s", s.rt.Lease, s.ttl, s.rt.Refresh)
	}

	d := &Storage{}
	if err := provision(t, d); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if d.conn.address != "127.0.0.1:8500" {
		t.Fatalf("default address = %q", d.conn.address)
	}

	withTLS := &Storage{TLS: &backend.TLS{}, KeyPrefix: "/kong/acme/"}
	if err := provision(t, withTLS); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if withTLS.conn.scheme != "https" || withTLS.prefix != "kong/acme" {
		t.Fatalf("scheme %q prefix %q, want https and kong/acme", withTLS.conn.scheme, withTLS.prefix)
	}
}

func TestPlaceholders(t *testing.T) {
	t.Setenv("CADDY_ACME_TEST_CONSUL_TOKEN", secretToken)
	t.Setenv("CADDY_ACME_TEST_CONSUL_ADDR", "127.0.0.1:8599")
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(testKey(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Storage{
		Address: "{env.CADDY_ACME_TEST_CONSUL_ADDR}",
		Token:   "{env.CADDY_ACME_TEST_CONSUL_TOKEN}",
		Options: backend.Options{EncryptionKey: "{file." + keyFile + "}"},
	}
	if err := provision(t, s); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if s.conn.token != secretToken || s.conn.address != "127.0.0.1:8599" || s.rt.Sealer == nil {
		t.Fatalf("placeholders not expanded: address %q, token set %v, sealer %v", s.conn.address, s.conn.token == secretToken, s.rt.Sealer)
	}
	if s.Token != "{env.CADDY_ACME_TEST_CONSUL_TOKEN}" {
		t.Fatalf("Provision changed the configured token field to %q", s.Token)
	}
}

func TestStringRedacts(t *testing.T) {
	key := testKey(t)
	t.Setenv("CADDY_ACME_TEST_CONSUL_TOKEN", secretToken)
	for _, tt := range []struct {
		name      string
		s         *Storage
		provision bool
	}{
		{"literal, provisioned", &Storage{Token: secretToken, Options: backend.Options{EncryptionKey: key}}, true},
		{"literal, not provisioned", &Storage{Token: secretToken, Options: backend.Options{EncryptionKey: key}}, false},
		{"placeholder, provisioned", &Storage{Token: "{env.CADDY_ACME_TEST_CONSUL_TOKEN}", Options: backend.Options{EncryptionKey: key}}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.provision {
				if err := provision(t, tt.s); err != nil {
					t.Fatal(err)
				}
			}
			var logged bytes.Buffer
			logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logged), zap.DebugLevel))
			logger.Info("storage", zap.Any("storage", tt.s)) // what certmagic does
			for _, out := range []string{tt.s.String(), fmt.Sprint(tt.s), fmt.Sprintf("%v", tt.s), logged.String()} {
				if strings.Contains(out, secretToken) || strings.Contains(out, key) {
					t.Fatalf("output shows a secret: %s", out)
				}
			}
			s := tt.s.String()
			if !strings.Contains(s, "token redacted") || !strings.Contains(s, "encrypted (key redacted)") || !strings.Contains(s, "127.0.0.1:8500") {
				t.Fatalf("String() = %q, want address, and token and key marked redacted", s)
			}
		})
	}
}

func TestClientsShared(t *testing.T) {
	a := &Storage{Address: "127.0.0.1:1", Token: "t1"}
	b := &Storage{Address: "127.0.0.1:1", Token: "t1"}
	c := &Storage{Address: "127.0.0.1:1", Token: "t2"}
	for _, s := range []*Storage{a, b, c} {
		if err := provision(t, s); err != nil {
			t.Fatal(err)
		}
	}
	if a.client != b.client {
		t.Fatal("two storages with the same settings do not share a client")
	}
	if a.client == c.client {
		t.Fatal("storages with different tokens share a client")
	}
	if strings.Contains(a.poolKey, "t1") {
		t.Fatalf("pool key %q contains the token", a.poolKey)
	}
	// Cleanup is idempotent, also after a crash.
	a.crash()
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	// Cleanup after a failed Provision.
	bad := &Storage{Scheme: "ftp"}
	if err := provision(t, bad); err == nil {
		t.Fatal("want an error")
	}
	if err := bad.Cleanup(); err != nil {
		t.Fatalf("Cleanup after failed Provision: %v", err)
	}
}

func TestKeyLayout(t *testing.T) {
	s := &Storage{prefix: "p"}
	for _, tt := range []struct{ got, want string }{
		{s.dataKey("a/b"), "p/a/b"},
		{s.dirKey(""), "p/"},
		{s.dirKey("a"), "p/a/"},
		{s.lockKey("issue_cert_example.com"), "p.locks/issue_cert_example.com"},
		{s.chunkDir("a/b"), "p.chunks/ka/kb/"},
		{s.ownChunks("a/b"), "p.chunks/ka/kb/c/"},
		{s.chunkKey("a/b", "0123", 7), "p.chunks/ka/kb/c/0123.0007"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
	// A key's own chunks never lie under the chunk directory of another key.
	if strings.HasPrefix(s.ownChunks("a"), s.chunkDir("a/c")) || strings.HasPrefix(s.chunkKey("a", "g", 0), s.chunkDir("a/c")) {
		t.Fatal("chunks of a lie under the chunk directory of a/c")
	}
	m := manifest{gen: "abc", chunks: 3, size: 700000, plain: 699000}
	got, err := parseManifest([]byte(m.String()))
	if err != nil || got != m {
		t.Fatalf("parseManifest(%q) = %+v, %v", m.String(), got, err)
	}
	for _, bad := range []string{"", "x", manifestMagic + " a 1 2", manifestMagic + " a 1 2 -3", manifestMagic + " a x 2 3"} {
		if _, err := parseManifest([]byte(bad)); err == nil {
			t.Errorf("parseManifest(%q) succeeded", bad)
		}
	}
	now := time.Now()
	if d := flagsTime(nowFlags()).Sub(now); d < -time.Second || d > time.Second {
		t.Fatalf("flagsTime(nowFlags()) is %s from now", d)
	}
	if !flagsTime(0).IsZero() || flagsTime(flagChunked|1000).UnixMilli() != 1000 {
		t.Fatal("flagsTime ignores the chunk flag or invents a time")
	}
}
