package kongcompat_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// marker is in every secret value of this test's inputs (and "s3cret" in
// those of testdata/adapt): no warning and no error may contain it.
const marker = "SECRETMARK"

func assertNoSecret(t *testing.T, what, text string) {
	t.Helper()
	for _, m := range []string{marker, "s3cret"} {
		if strings.Contains(text, m) {
			t.Errorf("a secret appears in the %s: %s", what, text)
		}
	}
}

// TestSecretsNeverInMessages sets every credential Kong's plugin has
// (EAB key id and HMAC key, Redis password and Sentinel password and the
// deprecated auth, Consul and Vault tokens, AWS keys, PostgreSQL password,
// account key) and provokes warnings and errors around them.
func TestSecretsNeverInMessages(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "kong.conf")
	writeFile(t, conf, "database = postgres\npg_password = pg-"+marker+"\n")
	badConf := filepath.Join(dir, "bad.conf")
	writeFile(t, badConf, "pg_password = pg-"+marker+"\npg_port = 5432x\n")

	everything := `
account_email: ops@example.com
tos_accepted: true
eab_kid: kid-` + marker + `
eab_hmac_key: hmac-` + marker + `
domains: [shop.example.com, API.example.com, "example.*"]
storage: redis
storage_config:
  redis:
    host: redis.internal
    auth: auth-` + marker + `
    ssl: true
    ssl_verify: false
    sentinel_password: sentinel-` + marker + `
  consul:
    token: consul-` + marker + `
  vault:
    token: vault-` + marker + `
    tls_server_name: nil
`
	for _, tc := range []struct {
		name    string
		input   string
		conf    string
		wantErr bool
	}{
		{"valid, many warnings", string(deck(everything)), "", false},
		{"schema error beside the secrets", string(deck(strings.Replace(everything, "ops@example.com", "notaemail", 1))), "", true},
		{"deprecated and new password differ", string(deck(everything + "    password: pw-" + marker + "\n")), "", true},
		{"secret of the wrong type", string(deck("account_email: a@b\neab_hmac_key: [" + marker + "]\n")), "", true},
		{"secret too short", string(deck("account_email: a@b\neab_kid: \"\"\neab_hmac_key: " + marker + "\n")), "", true},
		{"cloud authentication", string(deck("account_email: a@b\nstorage: redis\nstorage_config:\n  redis:\n    host: r\n    cloud_authentication: {auth_provider: aws, aws_access_key_id: " + marker + ", aws_secret_access_key: " + marker + "}\n")), "", true},
		{"kong storage password from kong.conf", `{"name":"acme","config":{"account_email":"a@b","storage":"kong"}}`, conf, false},
		{"kong.conf error", `{"name":"acme","config":{"account_email":"a@b","storage":"kong"}}`, badConf, true},
		{"account key PEM invalid", "_format_version: \"3.0\"\nkeys:\n- kid: k\n  pem: {private_key: \"" + marker + "\"}\n" +
			strings.TrimPrefix(string(deck("account_email: a@b\naccount_key: {key_id: k}\n")), "_format_version: \"3.0\"\n"), "", true},
		{"account key JWK invalid", "_format_version: \"3.0\"\nkeys:\n- kid: k\n  jwk: '{\"kty\":\"RSA\",\"n\":\"" + marker + "\",\"d\":\"" + marker + "\"}'\n" +
			strings.TrimPrefix(string(deck("account_email: a@b\naccount_key: {key_id: k}\n")), "_format_version: \"3.0\"\n"), "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := map[string]any{"filename": "kong.yml"}
			if tc.conf != "" {
				opts["kong_conf"] = tc.conf
			}
			_, warnings, err := mapEnv(nil).Adapt([]byte(tc.input), opts)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error = %v, want an error: %v", err, tc.wantErr)
			}
			if err != nil {
				assertNoSecret(t, "error", err.Error())
			}
			if !tc.wantErr && len(warnings) == 0 {
				t.Fatal("no warnings: the case does not test them")
			}
			assertNoSecret(t, "warnings", formatWarnings(warnings))
		})
	}
}

// TestGoldenMessagesHoldNoSecrets checks the warnings and errors of every
// golden case, whose secrets all contain "s3cret".
func TestGoldenMessagesHoldNoSecrets(t *testing.T) {
	for _, c := range goldenCases(t) {
		_, warnings, err := c.adapt(t)
		if err != nil {
			assertNoSecret(t, c.name+" error", err.Error())
		}
		assertNoSecret(t, c.name+" warnings", formatWarnings(warnings))
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
