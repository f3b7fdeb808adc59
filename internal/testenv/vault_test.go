package testenv

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestStartVault(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts VaultOptions
	}{
		{"http", VaultOptions{}},
		{"tls", VaultOptions{TLS: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := StartVault(t, tc.opts)
			if tc.opts.TLS != strings.HasPrefix(v.Addr, "https://127.0.0.1:") {
				t.Fatalf("Addr = %s with TLS %v", v.Addr, tc.opts.TLS)
			}
			if tc.opts.TLS && (v.CAFile == "" || len(v.CAPEM) == 0) {
				t.Fatalf("no CA with TLS: CAFile %q", v.CAFile)
			}
			// KV version 2 is mounted at secret/ and the root token works
			call := func(method, path, body string) (int, string) {
				t.Helper()
				req, err := http.NewRequestWithContext(t.Context(), method, v.Addr+"/v1/"+path, strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("X-Vault-Token", v.RootToken)
				resp, err := v.HTTPClient().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			if code, body := call(http.MethodPut, "secret/data/probe", `{"data":{"v":"x"}}`); code != http.StatusOK {
				t.Fatalf("KV v2 write: %d %s", code, body)
			}
			if code, body := call(http.MethodGet, "secret/data/probe", ""); code != http.StatusOK || !strings.Contains(body, `"v":"x"`) {
				t.Fatalf("KV v2 read: %d %s", code, body)
			}
			v.Stop()
			v.Stop() // idempotent
			if _, err := v.HTTPClient().Get(v.Addr + "/v1/sys/health"); err == nil {
				t.Fatal("server still answers after Stop")
			}
		})
	}
}
