package vault

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// Secrets used in these tests: none may ever show in String, logs or errors.
const (
	testToken    = "hvs.TESTTOKENc0ffee"
	testSecretID = "secret-id-5ecre7"
	testKey      = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // base64 of 32 bytes
	testPassword = "urlpa55word"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    string // JSON of the result
		wantErr string
		// substring of the Provision error of the parsed module: the
		// Caddyfile parses, and the value is refused as in JSON
		provisionErr string
	}{
		{
			name:  "empty block",
			input: `acme_vault`,
			want:  `{}`,
		},
		{
			name: "every field",
			input: `acme_vault {
				address https://vault.internal:8200
				mount kv
				path_prefix kong/acme
				lock_prefix kong/acme-locks
				namespace team-a
				auth_method approle
				role_id rid
				secret_id {env.SECRET_ID}
				auth_mount approle-caddy
				timeout 3s
				tls {
					ca_file /etc/vault/ca.pem
					server_name vault.internal
					insecure_skip_verify
				}
				encryption_key {env.KEY}
				lock_lease 20s
				lock_refresh 5s
			}`,
			want: `{"address":"https://vault.internal:8200","mount":"kv","path_prefix":"kong/acme","lock_prefix":"kong/acme-locks","namespace":"team-a","auth_method":"approle","auth_mount":"approle-caddy","role_id":"rid","secret_id":"{env.SECRET_ID}","tls":{"ca_file":"/etc/vault/ca.pem","server_name":"vault.internal","insecure_skip_verify":true},"timeout":3000000000,"encryption_key":"{env.KEY}","lock_lease":20000000000,"lock_refresh":5000000000}`,
		},
		{
			name: "kubernetes",
			input: `acme_vault {
				auth_method kubernetes
				role caddy
				jwt_path /var/run/token
			}`,
			want: `{"auth_method":"kubernetes","role":"caddy","jwt_path":"/var/run/token"}`,
		},
		{
			name: "token and token file",
			input: `acme_vault {
				token {env.VAULT_TOKEN}
				token_file /run/token
			}`,
			want: `{"token":"{env.VAULT_TOKEN}","token_file":"/run/token"}`,
		},
		{name: "argument on the module line", input: `acme_vault http://x:8200`, wantErr: "wrong argument count"},
		{name: "unknown", input: "acme_vault {\n bogus 1\n}", wantErr: "unrecognized subdirective 'bogus'"},
		{name: "duplicate", input: "acme_vault {\n mount a\n mount b\n}", wantErr: "duplicate subdirective 'mount'"},
		{name: "duplicate option", input: "acme_vault {\n lock_lease 1s\n lock_lease 2s\n}", wantErr: "duplicate subdirective 'lock_lease'"},
		{name: "missing argument", input: "acme_vault {\n address\n}", wantErr: "wrong argument count"},
		{name: "extra argument", input: "acme_vault {\n token a b\n}", wantErr: "wrong argument count"},
		{name: "bad timeout", input: "acme_vault {\n timeout soon\n}", wantErr: "timeout: expected a positive duration"},
		{name: "zero timeout", input: "acme_vault {\n timeout 0s\n}", wantErr: "timeout: expected a positive duration"},
		{name: "timeout arity", input: "acme_vault {\n timeout 1s 2s\n}", wantErr: "wrong argument count"},
		{name: "negative timeout", input: "acme_vault {\n token t\n timeout -1s\n}", provisionErr: "timeout: must be positive, got -1s"},
		{name: "bad lease", input: "acme_vault {\n token t\n lock_lease -1s\n}", provisionErr: "lock_lease: must be positive, got -1s"},
		{name: "zero lease", input: "acme_vault {\n lock_lease 0s\n}", wantErr: "lock_lease: expected a positive duration"},
		{name: "encryption key arity", input: "acme_vault {\n encryption_key\n}", wantErr: "wrong argument count"},
		{name: "tls argument", input: "acme_vault {\n tls on\n}", wantErr: "wrong argument count"},
		{name: "tls unknown", input: "acme_vault {\n tls {\n verify no\n }\n}", wantErr: "unrecognized subdirective 'verify'"},
		{name: "tls duplicate", input: "acme_vault {\n tls {\n ca_file a\n ca_file b\n }\n}", wantErr: "duplicate subdirective 'ca_file'"},
		{name: "tls flag argument", input: "acme_vault {\n tls {\n insecure_skip_verify yes\n }\n}", wantErr: "wrong argument count"},
		{name: "tls missing argument", input: "acme_vault {\n tls {\n server_name\n }\n}", wantErr: "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s Storage
			err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.provisionErr != "" {
				if err := provision(t, &s); err == nil || !strings.Contains(err.Error(), tc.provisionErr) {
					t.Fatalf("Provision error = %v, want one containing %q", err, tc.provisionErr)
				}
				return
			}
			got, err := json.Marshal(&s)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func provision(t *testing.T, s *Storage) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	err := s.Provision(ctx)
	t.Cleanup(func() {
		if err := s.Cleanup(); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	return err
}

func TestProvisionErrors(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "not-a-ca.pem")
	if err := os.WriteFile(caFile, []byte("nope"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := func(s Storage) Storage {
		if s.AuthMethod == "" && s.Token == "" {
			s.Token = testToken
		}
		return s
	}
	for _, tc := range []struct {
		name    string
		s       Storage
		wantErr string
	}{
		{"no token", Storage{AuthMethod: "token"}, "token: required for auth_method token"},
		{"token with white space", Storage{Token: testToken + " x"}, "token: contains white space"},
		{"unknown method", Storage{AuthMethod: "ldap"}, `auth_method: want token, token_file, kubernetes or approle, got "ldap"`},
		{"field of another method", Storage{Token: testToken, TokenFile: "/x"}, "token_file: not used by auth_method token"},
		{"secret id with kubernetes", Storage{AuthMethod: "kubernetes", Role: "r", SecretID: testSecretID}, "secret_id: not used by auth_method kubernetes"},
		{"no token file", Storage{AuthMethod: "token_file"}, "token_file: required"},
		{"no role", Storage{AuthMethod: "kubernetes"}, "role: required for auth_method kubernetes"},
		{"no role id", Storage{AuthMethod: "approle", SecretID: testSecretID}, "role_id: required for auth_method approle"},
		{"bad auth mount", Storage{AuthMethod: "approle", RoleID: "r", AuthMount: "a/../b"}, "auth_mount:"},
		{"missing placeholder", Storage{Token: "{env.CADDY_ACME_VAULT_TEST_UNSET}"}, "token:"},
		{"missing secret id placeholder", Storage{AuthMethod: "approle", RoleID: "r", SecretID: "{env.CADDY_ACME_VAULT_TEST_UNSET}"}, "secret_id:"},
		{"address scheme", tok(Storage{Address: "ftp://vault:8200"}), "address: want an http:// or https:// URL"},
		{"address path", tok(Storage{Address: "https://vault:8200/v1"}), "address:"},
		{"address credentials", tok(Storage{Address: "https://user:" + testPassword + "@vault:8200"}), "address:"},
		{"address no host", tok(Storage{Address: "https://"}), "address:"},
		{"empty path prefix", tok(Storage{PathPrefix: "/"}), "path_prefix: must not be empty"},
		{"dot dot path prefix", tok(Storage{PathPrefix: "a/../b"}), "path_prefix:"},
		{"bad mount", tok(Storage{Mount: "a//b"}), "mount:"},
		{"lock prefix inside", tok(Storage{PathPrefix: "p", LockPrefix: "p/locks"}), "lock_prefix:"},
		{"lock prefix around", tok(Storage{PathPrefix: "p/data", LockPrefix: "p"}), "lock_prefix:"},
		{"lock prefix same", tok(Storage{PathPrefix: "p", LockPrefix: "/p/"}), "lock_prefix:"},
		{"negative timeout", tok(Storage{Timeout: caddy.Duration(-time.Second)}), "timeout: must be positive"},
		{"tls on http", tok(Storage{Address: "http://vault:8200", TLS: &backend.TLS{}}), "tls: set, but address is not https://"},
		{"missing ca file", tok(Storage{TLS: &backend.TLS{CAFile: filepath.Join(dir, "missing.pem")}}), "tls.ca_file:"},
		{"ca file without certificate", tok(Storage{TLS: &backend.TLS{CAFile: caFile}}), "tls.ca_file: no PEM certificate"},
		{"bad encryption key", tok(Storage{Options: backend.Options{EncryptionKey: "c2hvcnQ="}}), "encryption_key:"},
		{"refresh not below lease", tok(Storage{Options: backend.Options{LockLease: caddy.Duration(time.Second), LockRefresh: caddy.Duration(time.Second)}}), "lock_refresh:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.s
			err := provision(t, &s)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Provision error = %v, want one containing %q", err, tc.wantErr)
			}
			for _, secret := range []string{testToken, testSecretID, testPassword, "c2hvcnQ="} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error %q shows a secret", err)
				}
			}
		})
	}
}

// TestSecrets: a secret that fails placeholder expansion fails Provision
// naming its field, never showing a fragment of a literal value, and
// String never shows a secret. role_id is treated as one.
func TestSecrets(t *testing.T) {
	storagetest.Secrets(t, []storagetest.Secret{
		{Field: "token", Good: testToken, Module: func(v string) storagetest.Module {
			return &Storage{Token: v}
		}},
		{Field: "role_id", Good: "role-id-r0le1d", Module: func(v string) storagetest.Module {
			return &Storage{AuthMethod: "approle", RoleID: v}
		}},
		{Field: "secret_id", Good: testSecretID, Module: func(v string) storagetest.Module {
			return &Storage{AuthMethod: "approle", RoleID: "rid", SecretID: v}
		}},
		{Field: "encryption_key", Good: testKey, Module: func(v string) storagetest.Module {
			return &Storage{Token: testToken, Options: backend.Options{EncryptionKey: v}}
		}},
	})
}

func TestProvisionDefaultsAndPlaceholders(t *testing.T) {
	t.Setenv("CADDY_ACME_VAULT_TEST_TOKEN", testToken)
	t.Setenv("CADDY_ACME_VAULT_TEST_NS", "team-a")
	secretFile := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(secretFile, []byte(testSecretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Nothing listens there: Provision must not try to connect.
	s := Storage{Token: "{env.CADDY_ACME_VAULT_TEST_TOKEN}", Namespace: "{env.CADDY_ACME_VAULT_TEST_NS}"}
	if err := provision(t, &s); err != nil {
		t.Fatal(err)
	}
	if s.cfg.address != defaultAddress || s.mount != "secret" || s.prefix != "caddy-acme" || s.lockPrefix != "caddy-acme-locks" ||
		s.cfg.auth.method != "token" || s.cfg.auth.token != testToken || s.cfg.namespace != "team-a" || s.cfg.timeout != defaultTimeout ||
		s.rt.Lease != backend.DefaultLockLease || s.client.ready.Load() {
		t.Fatalf("defaults or placeholders wrong: %+v, mount %s prefix %s locks %s", s.cfg, s.mount, s.prefix, s.lockPrefix)
	}

	k := Storage{AuthMethod: "kubernetes", Role: "caddy", PathPrefix: "/kong/acme/", Address: "http://127.0.0.1:1/"}
	if err := provision(t, &k); err != nil {
		t.Fatal(err)
	}
	if k.cfg.auth.jwtPath != defaultJWTPath || k.cfg.auth.mount != "kubernetes" || k.prefix != "kong/acme" || k.lockPrefix != "kong/acme-locks" || k.cfg.address != "http://127.0.0.1:1" {
		t.Fatalf("kubernetes defaults wrong: %+v prefix %s", k.cfg.auth, k.prefix)
	}

	a := Storage{AuthMethod: "approle", RoleID: "rid", SecretID: "{file." + secretFile + "}"}
	if err := provision(t, &a); err != nil {
		t.Fatal(err)
	}
	if a.cfg.auth.mount != "approle" || a.cfg.auth.secretID != testSecretID {
		t.Fatalf("approle defaults or {file.} placeholder wrong: mount %q", a.cfg.auth.mount)
	}
}

func TestClientsShared(t *testing.T) {
	a, b, c := Storage{Token: testToken}, Storage{Token: testToken, PathPrefix: "other"}, Storage{Token: testToken + "2"}
	for _, s := range []*Storage{&a, &b, &c} {
		if err := provision(t, s); err != nil {
			t.Fatal(err)
		}
	}
	if a.client != b.client {
		t.Fatal("storages with the same connection settings do not share a client")
	}
	if a.client == c.client {
		t.Fatal("storages with different tokens share a client")
	}
	if strings.Contains(a.clientKey, testToken) {
		t.Fatal("the pool key shows the token")
	}
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := a.Cleanup(); err != nil { // idempotent
		t.Fatal(err)
	}
}

func TestCleanupAfterFailedProvision(t *testing.T) {
	s := Storage{AuthMethod: "nope"}
	if err := provision(t, &s); err == nil {
		t.Fatal("Provision succeeded")
	}
	if err := s.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

func TestStringRedacts(t *testing.T) {
	secrets := []string{testToken, testSecretID, testKey, testPassword}
	check := func(t *testing.T, s *Storage) {
		t.Helper()
		var logs bytes.Buffer
		enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
		logger := zap.New(zapcore.NewCore(enc, zapcore.AddSync(&logs), zap.DebugLevel))
		logger.Info("storage", zap.Any("storage", s), zap.Stringer("stringer", s), zap.Object("object", s))
		for _, out := range []string{s.String(), logs.String()} {
			for _, secret := range secrets {
				if strings.Contains(out, secret) {
					t.Fatalf("%q shows the secret %q", out, secret)
				}
			}
		}
		if !strings.Contains(s.String(), "acme_vault") || !strings.Contains(logs.String(), "acme_vault") {
			t.Fatalf("String %q or log %q does not describe the storage", s.String(), logs.String())
		}
	}
	for _, s := range []*Storage{
		{Address: "https://user:" + testPassword + "@vault:8200", Token: testToken, Options: backend.Options{EncryptionKey: testKey}},
		{AuthMethod: "approle", RoleID: "rid", SecretID: testSecretID, Options: backend.Options{EncryptionKey: testKey}},
	} {
		check(t, s) // before Provision
		if !strings.Contains(s.Address, testPassword) {
			s2 := *s
			if err := provision(t, &s2); err != nil {
				t.Fatal(err)
			}
			check(t, &s2)
		}
	}
	if !strings.Contains((&Storage{Options: backend.Options{EncryptionKey: testKey}}).String(), "redacted") {
		t.Fatal("String does not say the encryption key is redacted")
	}
}

func TestValueEncoding(t *testing.T) {
	for _, v := range [][]byte{{}, []byte("-----BEGIN CERTIFICATE-----\n"), {0xff, 0x00}, []byte("ok\x00nul")} {
		kv := encodeValue(v)
		if (kv.Encoding == "base64") == bytes.Equal([]byte(*kv.Value), v) && len(v) > 0 {
			t.Fatalf("%q encoded as %+v", v, kv)
		}
		got, err := kv.decode()
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("round trip of %q: %q, %v", v, got, err)
		}
	}
	if _, err := (&kvValue{}).decode(); err == nil {
		t.Fatal("a secret without value decoded")
	}
	bad := "x"
	if _, err := (&kvValue{Value: &bad, Encoding: "rot13"}).decode(); err == nil {
		t.Fatal("an unknown encoding decoded")
	}
}

func TestPollInterval(t *testing.T) {
	s := Storage{rt: backend.Runtime{Lease: 30 * time.Second}}
	for _, tc := range []struct{ waited, lo, hi time.Duration }{
		{0, 8 * time.Millisecond, 12 * time.Millisecond},
		{500 * time.Millisecond, 40 * time.Millisecond, 60 * time.Millisecond},
		{time.Minute, 80 * time.Millisecond, 120 * time.Millisecond},
	} {
		for range 100 {
			if d := s.pollInterval(tc.waited); d < tc.lo || d > tc.hi {
				t.Fatalf("pollInterval(%s) = %s, want within [%s, %s]", tc.waited, d, tc.lo, tc.hi)
			}
		}
	}
	short := Storage{rt: backend.Runtime{Lease: 500 * time.Millisecond}}
	if d := short.pollInterval(time.Minute); d > 60*time.Millisecond {
		t.Fatalf("pollInterval with a 500ms lease = %s, want at most lease/10 + jitter", d)
	}
}

func TestResponseErrorIsPermission(t *testing.T) {
	err := error(&responseError{status: 403, errs: []string{"permission denied"}})
	if !errors.Is(err, os.ErrPermission) || errors.Is(err, os.ErrNotExist) {
		t.Fatal("a 403 is not fs.ErrPermission, or is fs.ErrNotExist")
	}
	if got := err.Error(); got != "vault responded 403: permission denied" {
		t.Fatalf("Error() = %q", got)
	}
}

// TestInvalidKeys: keys that the Vault client would clean into another path
// are refused before any request (nothing listens at the address).
func TestInvalidKeys(t *testing.T) {
	s := Storage{Address: "http://127.0.0.1:1", Token: testToken}
	if err := provision(t, &s); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, key := range []string{"a/../b", "..", "a/./b", "a//b"} {
		_, errLoad := s.Load(ctx, key)
		_, errStat := s.Stat(ctx, key)
		_, errList := s.List(ctx, key, true)
		_, errTry := s.TryLock(ctx, key)
		for name, err := range map[string]error{
			"Load": errLoad, "Stat": errStat, "List": errList, "TryLock": errTry,
			"Store": s.Store(ctx, key, nil), "Delete": s.Delete(ctx, key), "Lock": s.Lock(ctx, key),
		} {
			if !errors.Is(err, fs.ErrInvalid) {
				t.Fatalf("%s(%q): %v, want fs.ErrInvalid", name, key, err)
			}
		}
	}
	if err := s.Store(ctx, "/", nil); !errors.Is(err, fs.ErrInvalid) {
		t.Fatalf("Store of the root: %v", err)
	}
	if _, err := s.Load(ctx, ""); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of the root: %v, want fs.ErrNotExist", err)
	}
}

func TestServerLease(t *testing.T) {
	for lease, want := range map[time.Duration]time.Duration{
		2 * time.Second:         2 * time.Second,
		1500 * time.Millisecond: 2 * time.Second,
		300 * time.Millisecond:  time.Second,
		30 * time.Second:        30 * time.Second,
	} {
		s := Storage{rt: backend.Runtime{Lease: lease}}
		if got := s.serverLease(); got != want {
			t.Errorf("serverLease for lock_lease %s = %s, want %s", lease, got, want)
		}
	}
}
