package caddyacme

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// loadApp loads a config made of the acme app alone, as `caddy run` would,
// and stops it again. Logs go to logFile unless it is "".
func loadApp(t *testing.T, app map[string]any, logFile string) error {
	t.Helper()
	logs := map[string]any{}
	if logFile != "" {
		logs["writer"] = map[string]any{"output": "file", "filename": logFile}
	}
	cfg, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"disabled": true},
		"storage": map[string]any{"module": "file_system", "root": t.TempDir()},
		"logging": map[string]any{"logs": map[string]any{"default": logs}},
		"apps":    map[string]any{"acme": app},
	})
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Load(cfg, true)
	if err == nil {
		if err := caddy.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	return err
}

func TestValidation(t *testing.T) {
	const secret = "SUPER-SECRET-VALUE"
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CADDY_ACME_TEST_SECRET", "!!"+secret+"!!")

	for _, tc := range []struct {
		name   string
		fields map[string]any
		want   string // substring of the error; "" = loads
	}{
		{"minimal", map[string]any{}, ""},
		{"every field", map[string]any{
			"tos_accepted": true, "eab_kid": "kid", "eab_hmac_key": "c2VjcmV0LWtleQ", "cert_type": "rsa",
			"rsa_key_size": 2048, "renew_threshold_days": 30, "domains": []string{"a.example.com", "*.b.example.com", "c.*"},
			"allow_any_domain": false, "fail_backoff_minutes": 0, "preferred_chain": "Root X", "enable_ipv4_common_name": false,
			"http_port": 8080, "issue_timeout": "2m", "cache_capacity": 50,
		}, ""},
		{"email missing", map[string]any{"account_email": ""}, `account_email: required: set the email address of the ACME account, e.g. "account_email": "ops@example.com"`},
		{"email invalid", map[string]any{"account_email": "notaemail"}, "account_email: invalid value: notaemail"},
		{"email placeholder missing", map[string]any{"account_email": "{env.CADDY_ACME_TEST_UNSET}"}, "account_email:"},
		{"api_uri", map[string]any{"api_uri": "ftp://ca.example"}, `api_uri: invalid URL "ftp://ca.example"`},
		{"cert_type", map[string]any{"cert_type": "dsa"}, `cert_type: expected "rsa" or "ecc", got "dsa"`},
		{"rsa_key_size", map[string]any{"rsa_key_size": 1024}, "rsa_key_size: expected 2048, 3072 or 4096, got 1024"},
		{"renew_threshold_days", map[string]any{"renew_threshold_days": -1}, "renew_threshold_days: must not be negative"},
		{"fail_backoff_minutes", map[string]any{"fail_backoff_minutes": -1}, "fail_backoff_minutes: must not be negative"},
		{"domains wildcard", map[string]any{"domains": []string{"a.*.example.com"}}, "domains: domains[0]: domain \"a.*.example.com\": invalid wildcard: must be placed at leftmost or rightmost label"},
		{"domains two wildcards", map[string]any{"domains": []string{"*.example.*"}}, "invalid wildcard: must have at most one wildcard"},
		{"domains port", map[string]any{"domains": []string{"example.com:443"}}, "domains: domains[0]"},
		{"eab kid alone", map[string]any{"eab_kid": "kid"}, "eab_hmac_key: required when eab_kid is set"},
		{"eab key alone", map[string]any{"eab_hmac_key": "{env.CADDY_ACME_TEST_SECRET}"}, "eab_kid: required when eab_hmac_key is set"},
		{"eab key not base64url", map[string]any{"eab_kid": "kid", "eab_hmac_key": "{env.CADDY_ACME_TEST_SECRET}"}, "eab_hmac_key: not base64url"},
		{"account_key not PEM", map[string]any{"account_key": "{env.CADDY_ACME_TEST_SECRET}"}, "account_key: not a PEM-encoded private key"},
		{"trusted_roots missing file", map[string]any{"trusted_roots": []string{"/nonexistent/root.pem"}}, "trusted_roots: reading /nonexistent/root.pem"},
		{"trusted_roots not PEM", map[string]any{"trusted_roots": []string{notPEM}}, "trusted_roots: " + notPEM + " holds no PEM certificate"},
		{"http_port", map[string]any{"http_port": 70000}, "http_port: expected a port between 1 and 65535, got 70000"},
		{"issue_timeout", map[string]any{"issue_timeout": "-1s"}, "issue_timeout: must not be negative"},
		{"cache_capacity", map[string]any{"cache_capacity": -1}, "cache_capacity: must not be negative"},
		{"storage module", map[string]any{"storage": map[string]any{"module": "nosuch"}}, "storage: loading module"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := map[string]any{"account_email": "ops@example.com", "api_uri": "https://ca.example/dir"}
			for k, v := range tc.fields {
				app[k] = v
			}
			err := loadApp(t, app, "")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("loading: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("loading succeeded, want an error containing %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not contain %q", err, tc.want)
			case err != nil && strings.Contains(err.Error(), secret):
				t.Fatalf("error %q reveals a secret", err)
			}
		})
	}
}

// TestWarnsWhenNothingAllowed: an empty domains list without
// allow_any_domain or a permission module serves nothing but the domains
// added through the admin API, which the app says at start.
func TestWarnsWhenNothingAllowed(t *testing.T) {
	const warning = "no certificate will be obtained but for the domains added through the admin API (/acme/domains): domains is empty, allow_any_domain is false and there is no permission module"
	for _, tc := range []struct {
		name   string
		fields map[string]any
		warns  bool
	}{
		{"no domains", map[string]any{}, true},
		{"domains", map[string]any{"domains": []string{"example.com"}}, false},
		{"allow_any_domain", map[string]any{"allow_any_domain": true}, false},
		{"permission", map[string]any{"permission": map[string]any{"module": "http", "endpoint": "http://127.0.0.1:9/allowed"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logFile := filepath.Join(t.TempDir(), "caddy.log")
			app := map[string]any{"account_email": "ops@example.com", "api_uri": "https://ca.example/dir"}
			for k, v := range tc.fields {
				app[k] = v
			}
			if err := loadApp(t, app, logFile); err != nil {
				t.Fatal(err)
			}
			logs, err := os.ReadFile(logFile)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(string(logs), warning); got != tc.warns {
				t.Fatalf("warning logged = %v, want %v; logs:\n%s", got, tc.warns, logs)
			}
		})
	}
}
