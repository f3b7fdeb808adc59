package redis

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// testEncryptionKey is a valid encryption_key (hex).
const testEncryptionKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  string // JSON of the module, if no error
		err   string // substring of the error
		// substring of the Provision error of the parsed module: the
		// Caddyfile parses, and the value is refused as in JSON
		provisionErr string
	}{
		{
			name:  "empty",
			input: `acme_redis`,
			want:  `{}`,
		},
		{
			name:  "inline addresses",
			input: `acme_redis redis1:6379 redis2:6379`,
			want:  `{"addresses":["redis1:6379","redis2:6379"]}`,
		},
		{
			name: "everything",
			input: `acme_redis {
				addresses 10.0.0.1:26379 10.0.0.2:26379
				master_name mymaster
				username caddy
				password {env.REDIS_PASSWORD}
				sentinel_username sentinel
				sentinel_password {env.SENTINEL_PASSWORD}
				db 3
				key_prefix "kong:"
				dial_timeout 2s
				read_timeout 1s
				write_timeout 500ms
				tls {
					ca_file /etc/ca.pem
					server_name redis.internal
					cert_file /etc/client.pem
					key_file /etc/client.key
				}
				encryption_key {env.KEY}
				lock_lease 1m
				lock_refresh 10s
			}`,
			want: `{"addresses":["10.0.0.1:26379","10.0.0.2:26379"],"master_name":"mymaster","username":"caddy",` +
				`"password":"{env.REDIS_PASSWORD}","sentinel_username":"sentinel","sentinel_password":"{env.SENTINEL_PASSWORD}",` +
				`"db":3,"key_prefix":"kong:","tls":{"ca_file":"/etc/ca.pem","server_name":"redis.internal",` +
				`"cert_file":"/etc/client.pem","key_file":"/etc/client.key"},` +
				`"dial_timeout":2000000000,"read_timeout":1000000000,"write_timeout":500000000,` +
				`"encryption_key":"{env.KEY}","lock_lease":60000000000,"lock_refresh":10000000000}`,
		},
		{
			name:  "cluster and bare tls",
			input: "acme_redis {\n cluster\n addresses seed:7000\n tls\n}",
			want:  `{"addresses":["seed:7000"],"cluster":true,"tls":{}}`,
		},
		{
			name:  "tls disabled, insecure",
			input: "acme_redis {\n tls {\n enabled false\n insecure_skip_verify\n }\n}",
			want:  `{"tls":{"enabled":false,"insecure_skip_verify":true}}`,
		},
		{name: "unknown", input: "acme_redis {\n hostname x\n}", err: "unrecognized subdirective 'hostname'"},
		{name: "unknown in tls", input: "acme_redis {\n tls {\n verify\n }\n}", err: "unrecognized subdirective 'verify'"},
		{name: "duplicate", input: "acme_redis {\n db 1\n db 2\n}", err: "duplicate subdirective 'db'"},
		{name: "duplicate shared option", input: "acme_redis {\n lock_lease 1m\n lock_lease 2m\n}", err: "duplicate subdirective 'lock_lease'"},
		{name: "addresses twice", input: "acme_redis a:1 {\n addresses b:2\n}", err: "duplicate subdirective 'addresses'"},
		{name: "duplicate in tls", input: "acme_redis {\n tls {\n ca_file a\n ca_file b\n }\n}", err: "duplicate subdirective 'ca_file'"},
		{name: "addresses without args", input: "acme_redis {\n addresses\n}", err: "wrong argument count"},
		{name: "password without arg", input: "acme_redis {\n password\n}", err: "wrong argument count"},
		{name: "password two args", input: "acme_redis {\n password a b\n}", err: "wrong argument count"},
		{name: "cluster with arg", input: "acme_redis {\n cluster yes\n}", err: "wrong argument count"},
		{name: "tls with arg", input: "acme_redis {\n tls on\n}", err: "wrong argument count"},
		{name: "insecure with arg", input: "acme_redis {\n tls {\n insecure_skip_verify true\n }\n}", err: "wrong argument count"},
		{name: "db not a number", input: "acme_redis {\n db one\n}", err: "db: expected a database number"},
		{name: "db negative", input: "acme_redis {\n db -1\n}", provisionErr: "db: must not be negative, got -1"},
		{name: "bad timeout", input: "acme_redis {\n read_timeout soon\n}", err: "read_timeout: expected a positive duration"},
		{name: "zero timeout", input: "acme_redis {\n dial_timeout 0s\n}", err: "dial_timeout: expected a positive duration"},
		{name: "negative timeout", input: "acme_redis {\n write_timeout -1s\n}", provisionErr: "write_timeout: must not be negative, got -1s"},
		{name: "bad enabled", input: "acme_redis {\n tls {\n enabled maybe\n }\n}", err: "enabled: expected true or false"},
		{name: "bad lease", input: "acme_redis {\n lock_lease -5s\n}", provisionErr: "lock_lease: must be positive, got -5s"},
		{name: "zero lease", input: "acme_redis {\n lock_lease 0s\n}", err: "lock_lease: expected a positive duration"},
		{name: "refresh not below lease", input: "acme_redis {\n lock_lease 10s\n lock_refresh 10s\n}", provisionErr: "lock_refresh: must be positive and shorter than lock_lease"},
		{name: "db on cluster", input: "acme_redis a:1 b:2 {\n db 1\n}", provisionErr: "db: Redis Cluster has only database 0"},
		{name: "encryption key two args", input: "acme_redis {\n encryption_key a b\n}", err: "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s Storage
			err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one containing %q", err, tc.err)
				}
				if !strings.Contains(err.Error(), "Testfile:") {
					t.Fatalf("error %q does not say where", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("UnmarshalCaddyfile: %v", err)
			}
			if tc.provisionErr != "" {
				if err := provisionErr(t, &s); err == nil || !strings.Contains(err.Error(), tc.provisionErr) {
					t.Fatalf("Provision error = %v, want one containing %q", err, tc.provisionErr)
				}
				return
			}
			got, err := json.Marshal(&s)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("JSON =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

// provisionErr provisions s and returns the error, cleaning up on success.
func provisionErr(t *testing.T, s *Storage) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err := s.Provision(ctx)
	if cerr := s.Cleanup(); cerr != nil {
		t.Fatalf("Cleanup: %v", cerr)
	}
	return err
}

func TestProvisionErrors(t *testing.T) {
	t.Setenv("CADDY_ACME_TEST_EMPTY", "")
	for _, tc := range []struct {
		name string
		s    *Storage
		err  string
	}{
		{"url address", &Storage{Addresses: []string{"redis://h:6379"}}, "addresses[0]: want host:port, not a URL"},
		{"no port", &Storage{Addresses: []string{"a:1", "hostonly"}}, "addresses[1]: want host:port"},
		{"bad port", &Storage{Addresses: []string{"h:http"}}, "addresses[0]: want host:port, the port"},
		{"no host", &Storage{Addresses: []string{":6379"}}, "the host is missing"},
		{"unknown placeholder in address", &Storage{Addresses: []string{"{nope.x}:1"}}, "addresses[0]"},
		{"empty env in username", &Storage{Username: "{env.CADDY_ACME_TEST_EMPTY}"}, "username"},
		{"empty env in password", &Storage{Password: "{env.CADDY_ACME_TEST_EMPTY}"}, "password"},
		{"sentinel without addresses", &Storage{MasterName: "m"}, "addresses: the Sentinel addresses are required"},
		{"sentinel and cluster", &Storage{MasterName: "m", Addresses: []string{"a:1"}, Cluster: true}, "cluster: cannot be combined"},
		{"sentinel password without sentinel", &Storage{SentinelPassword: "x"}, "sentinel_username, sentinel_password: only used with master_name"},
		{"db on cluster", &Storage{Addresses: []string{"a:1", "b:2"}, DB: 2}, "db: Redis Cluster has only database 0"},
		{"db negative", &Storage{DB: -1}, "db: must not be negative"},
		{"negative timeout", &Storage{DialTimeout: caddy.Duration(-1)}, "dial_timeout: must not be negative"},
		{"missing ca file", &Storage{TLS: &backend.TLS{CAFile: "/nonexistent/ca.pem"}}, "tls.ca_file"},
		{"ca file without certificates", &Storage{TLS: &backend.TLS{CAFile: "redis_test.go"}}, "tls.ca_file: no PEM certificate"},
		{"client cert without key", &Storage{TLS: &backend.TLS{CertFile: "x.pem"}}, "tls.cert_file, tls.key_file: set both"},
		{"bad encryption key", &Storage{}, "encryption_key"},
		{"refresh not shorter than lease", &Storage{}, "lock_refresh"},
		{"unknown placeholder in key prefix", &Storage{KeyPrefix: "{nope}"}, "key_prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			switch tc.name {
			case "bad encryption key":
				tc.s.EncryptionKey = "too-short"
			case "refresh not shorter than lease":
				tc.s.LockLease = caddy.Duration(10e9)
				tc.s.LockRefresh = caddy.Duration(10e9)
			}
			err := provisionErr(t, tc.s)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Provision error = %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// TestSecrets: a secret that fails placeholder expansion fails Provision
// naming its field, never showing a fragment of a literal value, and
// String never shows a secret.
func TestSecrets(t *testing.T) {
	storagetest.Secrets(t, []storagetest.Secret{
		{Field: "password", Good: "pa55-w0rd-xyz", Module: func(v string) storagetest.Module {
			return &Storage{Password: v}
		}},
		{Field: "sentinel_password", Good: "s3ntinel-pw-xyz", Module: func(v string) storagetest.Module {
			return &Storage{MasterName: "m", Addresses: []string{"127.0.0.1:1"}, SentinelPassword: v}
		}},
		{Field: "encryption_key", Good: testEncryptionKey, Module: func(v string) storagetest.Module {
			return &Storage{Options: backend.Options{EncryptionKey: v}}
		}},
	})
}

func TestProvisionOK(t *testing.T) {
	t.Setenv("CADDY_ACME_TEST_PASSWORD", "from-env")
	for _, tc := range []struct {
		name    string
		s       *Storage
		cluster bool
	}{
		{"defaults", &Storage{}, false},
		{"one address", &Storage{Addresses: []string{"127.0.0.1:1"}}, false},
		{"cluster seeds", &Storage{Addresses: []string{"127.0.0.1:1", "127.0.0.1:2"}}, true},
		{"cluster forced", &Storage{Addresses: []string{"127.0.0.1:1"}, Cluster: true}, true},
		{"sentinel", &Storage{Addresses: []string{"127.0.0.1:1", "127.0.0.1:2"}, MasterName: "m", DB: 2}, false},
		{"placeholder password", &Storage{Password: "{env.CADDY_ACME_TEST_PASSWORD}"}, false},
		{"tls off", &Storage{TLS: &backend.TLS{Enabled: new(bool), CAFile: "/nonexistent"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			if err := tc.s.Provision(ctx); err != nil {
				t.Fatalf("Provision: %v", err)
			}
			defer tc.s.Cleanup()
			if tc.s.client.cluster != tc.cluster {
				t.Fatalf("cluster = %v, want %v", tc.s.client.cluster, tc.cluster)
			}
			if tc.s.prefix != DefaultKeyPrefix {
				t.Fatalf("prefix = %q", tc.s.prefix)
			}
			// Cleanup is idempotent.
			if err := tc.s.Cleanup(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestClientsShared checks that instances with the same connection
// settings share one client, whatever their key prefix, and that it
// survives until its last user is cleaned up.
func TestClientsShared(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	a := &Storage{Addresses: []string{"127.0.0.1:1"}, KeyPrefix: "a:"}
	b := &Storage{Addresses: []string{"127.0.0.1:1"}, KeyPrefix: "b:"}
	c := &Storage{Addresses: []string{"127.0.0.1:1"}, Password: "other"}
	for _, s := range []*Storage{a, b, c} {
		if err := s.Provision(ctx); err != nil {
			t.Fatal(err)
		}
	}
	defer c.Cleanup()
	if a.client != b.client {
		t.Fatal("same settings, different clients")
	}
	if a.client == c.client {
		t.Fatal("different passwords, same client")
	}
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := b.client.Ping(context.Background()).Err(); err != nil && strings.Contains(err.Error(), "closed") {
		t.Fatalf("client closed while b still uses it: %v", err)
	}
	if err := b.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := b.client.Ping(context.Background()).Err(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("client still open after its last user: %v", err)
	}
}

func TestStringRedacts(t *testing.T) {
	const password, sentinelPassword = "pa55-w0rd-xyz", "s3ntinel-pw-xyz"
	const key = testEncryptionKey
	s := &Storage{
		Addresses:        []string{"10.0.0.1:26379"},
		MasterName:       "mymaster",
		Username:         "caddy",
		Password:         password,
		SentinelPassword: sentinelPassword,
		KeyPrefix:        "kong:",
		TLS:              &backend.TLS{},
	}
	s.EncryptionKey = key
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Cleanup()

	core, logs := observer.New(zapcore.DebugLevel)
	zap.New(core).Info("storage", zap.Any("storage", s))
	logged := logs.All()[0].ContextMap()["storage"]
	for _, out := range []string{s.String(), logged.(string)} {
		for _, secret := range []string{password, sentinelPassword, key} {
			if strings.Contains(out, secret) {
				t.Fatalf("%q shows a secret", out)
			}
		}
		for _, want := range []string{"10.0.0.1:26379", "mymaster", `"kong:"`, "password=(redacted)", "tls", "aes-256-gcm"} {
			if !strings.Contains(out, want) {
				t.Fatalf("%q lacks %q", out, want)
			}
		}
	}
	if got := new(Storage).String(); !strings.Contains(got, DefaultAddress) || !strings.Contains(got, DefaultKeyPrefix) {
		t.Fatalf("String of the zero value = %q", got)
	}
}

func TestModuleInfo(t *testing.T) {
	info := new(Storage).CaddyModule()
	if info.ID != "caddy.storage.acme_redis" {
		t.Fatalf("ID = %s", info.ID)
	}
	if _, ok := info.New().(*Storage); !ok {
		t.Fatal("New does not return a *Storage")
	}
}

func TestIndexFields(t *testing.T) {
	for _, tc := range []struct {
		dir, field, key string
		isDir           bool
	}{
		{"", "a", "a", false},
		{"", "a/", "a", true},
		{"a/b", "c", "a/b/c", false},
		{"a/b", "c/", "a/b/c", true},
	} {
		n := childNode(tc.dir, tc.field, "1")
		if n.key != tc.key || n.dir != tc.isDir || n.parent != tc.dir || n.field != tc.field {
			t.Fatalf("childNode(%q, %q) = %+v", tc.dir, tc.field, n)
		}
	}
	got := indexFields("a/b/c")
	want := []indexField{{"", "a/"}, {"a", "b/"}, {"a/b", "c"}}
	if !slices.Equal(got, want) {
		t.Fatalf("indexFields(a/b/c) = %q, want %q", got, want)
	}
	if got := indexFields("top"); !slices.Equal(got, []indexField{{"", "top"}}) {
		t.Fatalf("indexFields(top) = %q", got)
	}
	for key, want := range map[string][2]string{"a": {"", "a"}, "a/b": {"a", "b"}, "a/b/c": {"a/b", "c"}} {
		if d, n := parentOf(key); d != want[0] || n != want[1] {
			t.Fatalf("parentOf(%q) = %q, %q", key, d, n)
		}
	}
}
