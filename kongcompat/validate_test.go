package kongcompat_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// every caddy-acme module, as in a Caddy built with it
	_ "github.com/acmekit/caddy-acme"
)

// TestGoldenConfigsValidate loads every adapted golden config into Caddy
// with all modules registered and provisions it (caddy.Validate: no
// listener is started, no server is contacted). The placeholders of a
// case are given the values of its env file, as Caddy would read them.
func TestGoldenConfigsValidate(t *testing.T) {
	for _, c := range goldenCases(t) {
		if !fileExists(filepath.Join(c.dir, "output.json")) {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			out, _, err := c.adapt(t)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var cfg caddy.Config
			if err := caddy.StrictUnmarshalJSON(out, &cfg); err != nil {
				t.Fatalf("decoding the adapted config: %v", err)
			}
			err = caddy.Validate(&cfg)
			want, _ := os.ReadFile(filepath.Join(c.dir, "validate_error.txt"))
			switch wantErr := strings.TrimSpace(string(want)); {
			case wantErr == "" && err != nil:
				t.Fatalf("caddy.Validate: %v", err)
			case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
				t.Fatalf("caddy.Validate: %v, want an error containing %q", err, wantErr)
			}
		})
	}
}
