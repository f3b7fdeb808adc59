package kongcompat_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

const kongStoragePlugin = `{"name": "acme", "config": {"account_email": "ops@example.com", "tos_accepted": true, "domains": ["a.example.com"], "storage": "kong"}}`

// storageOf returns the acme app's storage of an adapted config.
func storageOf(t *testing.T, out []byte) map[string]any {
	t.Helper()
	var cfg struct {
		Apps struct {
			ACME struct {
				Storage map[string]any `json:"storage"`
			} `json:"acme"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.Apps.ACME.Storage
}

// TestRegisteredAdapterReadsKongConf goes through the adapter Caddy's
// commands use (registered as "kong"), with the process environment:
// kong.conf given by KONG_CONF, and Kong's KONG_PG_* overrides winning
// over the file, as in Kong.
func TestRegisteredAdapterReadsKongConf(t *testing.T) {
	adapter := caddyconfig.GetAdapter("kong")
	if adapter == nil {
		t.Fatal(`no config adapter "kong" registered`)
	}
	conf := filepath.Join(t.TempDir(), "kong.conf")
	writeFile(t, conf, `
# kong.conf
database = postgres        # traditional mode
pg_host = file-host
pg_port = 6432
pg_user = kong_user
pg_password = ab\#cd   # an escaped \# is part of the value
pg_database = kong_db
pg_schema = acme
pg_ssl = on
pg_ssl_verify = off
pg_timeout = 2500
`)
	t.Setenv("KONG_CONF", conf)
	t.Setenv("KONG_PG_HOST", "env-host")
	t.Setenv("KONG_PG_PASSWORD", "") // set, even empty: the placeholder wins over the file
	out, warnings, err := adapter.Adapt([]byte(kongStoragePlugin), map[string]any{"filename": "plugin.json"})
	if err != nil {
		t.Fatal(err)
	}
	got := storageOf(t, out)
	want := map[string]any{
		"module": "acme_kong", "pg_host": "env-host", "pg_port": 6432.0, "pg_user": "kong_user",
		"pg_password": "{env.KONG_PG_PASSWORD}", "pg_database": "kong_db", "pg_schema": "acme",
		"pg_ssl": true, "pg_timeout": 2500.0,
	}
	if len(got) != len(want) {
		t.Fatalf("storage = %v\nwant %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if strings.Contains(formatWarnings(warnings), "pg_password of") {
		t.Errorf("warned about a password copied from kong.conf, but KONG_PG_PASSWORD overrides it:\n%s", formatWarnings(warnings))
	}

	// the kong_conf option wins over KONG_CONF
	other := filepath.Join(t.TempDir(), "other.conf")
	writeFile(t, other, "pg_user = other_user\npg_password = ab\\#cd\n")
	t.Setenv("KONG_PG_PASSWORD", "")
	out, _, err = adapter.Adapt([]byte(kongStoragePlugin), map[string]any{"filename": "plugin.json", "kong_conf": other})
	if err != nil {
		t.Fatal(err)
	}
	if got := storageOf(t, out); got["pg_user"] != "other_user" || got["pg_port"] != 5432.0 {
		t.Errorf("with the kong_conf option: storage = %v", got)
	}
}

// TestKongConf covers kong.conf and the KONG_* variables: the values and
// defaults the kong storage gets, the mode checks, and Kong's errors.
func TestKongConf(t *testing.T) {
	for _, tc := range []struct {
		name  string
		conf  string // kong.conf content; "" for none
		env   map[string]string
		input string
		check func(t *testing.T, storage map[string]any, warnings string)
		err   string // the error's end
	}{
		{
			name: "comment and escaped hash", conf: "pg_password = ab\\#cd # comment\n", input: kongStoragePlugin,
			check: func(t *testing.T, s map[string]any, _ string) {
				if s["pg_password"] != "ab#cd" {
					t.Errorf("pg_password = %q, want ab#cd", s["pg_password"])
				}
			},
		},
		{
			name: "vault reference", conf: "pg_password = {vault://env/kong-pg-password}\n", input: kongStoragePlugin,
			check: func(t *testing.T, s map[string]any, w string) {
				if s["pg_password"] != "{env.KONG_PG_PASSWORD}" {
					t.Errorf("pg_password = %q", s["pg_password"])
				}
				if strings.Contains(w, "copied into the adapted config") {
					t.Errorf("warned about a copied password for a reference: %s", w)
				}
			},
		},
		{
			name: "password file from the Docker image's variable", env: map[string]string{"KONG_PG_PASSWORD_FILE": "/run/secrets/pg"}, input: kongStoragePlugin,
			check: func(t *testing.T, s map[string]any, _ string) {
				if s["pg_password"] != "{file./run/secrets/pg}" {
					t.Errorf("pg_password = %q", s["pg_password"])
				}
			},
		},
		{
			name: "pg_ssl_verify without pg_ssl is ignored, as Kong does", conf: "pg_ssl = off\npg_ssl_verify = on\n", input: kongStoragePlugin,
			check: func(t *testing.T, s map[string]any, _ string) {
				if s["pg_ssl"] != false || s["pg_ssl_verify"] != nil {
					t.Errorf("pg_ssl = %v, pg_ssl_verify = %v", s["pg_ssl"], s["pg_ssl_verify"])
				}
			},
		},
		{
			name: "data plane may use kong storage", env: map[string]string{"KONG_ROLE": "data_plane", "KONG_DATABASE": "off"}, input: kongStoragePlugin,
			check: func(t *testing.T, s map[string]any, w string) {
				if !strings.Contains(w, "storage kong on a data plane") {
					t.Errorf("no data plane warning:\n%s", w)
				}
			},
		},
		{
			name: "declarative file with database = postgres", conf: "database = postgres\npg_host = db\n",
			input: string(deck("account_email: a@b\ntos_accepted: true\nstorage: kong")),
			check: func(t *testing.T, s map[string]any, _ string) {
				if s["pg_host"] != "db" {
					t.Errorf("pg_host = %v", s["pg_host"])
				}
			},
		},
		{
			name: "DB-less by environment", env: map[string]string{"KONG_DATABASE": "off"}, input: kongStoragePlugin,
			err: `acme plugin: schema violation ("kong" storage can't be used with dbless mode)`,
		},
		{
			name: "hybrid control plane with shm", conf: "role = control_plane\n", input: `{"name":"acme","config":{"account_email":"a@b"}}`,
			err: `acme plugin: schema violation ("shm" storage can't be used in Hybrid mode)`,
		},
		{
			name: "unknown database", conf: "database = cassandra\n", input: kongStoragePlugin,
			err: "kong.conf:1: database has an invalid value: 'cassandra' (postgres, off)",
		},
		{
			name: "unknown role", env: map[string]string{"KONG_ROLE": "edge"}, input: kongStoragePlugin,
			err: "KONG_ROLE has an invalid value: 'edge' (traditional, data_plane, control_plane)",
		},
		{
			name: "pg_ssl not a boolean", conf: "pg_ssl = maybe\n", input: kongStoragePlugin,
			err: "kong.conf:1: pg_ssl is not a boolean: 'maybe' (on, off)",
		},
		{
			name: "pg_port not a number", env: map[string]string{"KONG_PG_PORT": "http"}, input: kongStoragePlugin,
			err: "KONG_PG_PORT is not a valid number: 'http' (1 to 65535)",
		},
		{
			name: "not name = value", conf: "pg_host\n", input: kongStoragePlugin,
			err: "kong.conf:1: expected name = value",
		},
		{
			name: "vault reference to another vault", conf: "pg_password = {vault://hcv/kong/pg}\n", input: kongStoragePlugin,
			err: "pg_password: Kong vault reference {vault://hcv/...} (a vault of type hcv): caddy-acme reads secrets only from environment variables (Kong's env vault, translated to {env.NAME} placeholders); put the secret in an environment variable and reference it as {vault://env/NAME}",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := map[string]any{"filename": "in"}
			if tc.conf != "" {
				dir := t.TempDir()
				writeFile(t, filepath.Join(dir, "kong.conf"), tc.conf)
				opts["kong_conf"] = filepath.Join(dir, "kong.conf")
			}
			out, warnings, err := mapEnv(tc.env).Adapt([]byte(tc.input), opts)
			if tc.err != "" {
				if err == nil || !strings.HasSuffix(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one ending in %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, storageOf(t, out), formatWarnings(warnings))
		})
	}
}

// TestNoKongConfWithoutBeingAsked checks that without the option and
// KONG_CONF, no file is read (Kong's default /etc/kong/kong.conf
// included): only Kong's defaults are used.
func TestNoKongConfWithoutBeingAsked(t *testing.T) {
	out, warnings, err := mapEnv(nil).Adapt([]byte(kongStoragePlugin), map[string]any{"filename": "in"})
	if err != nil {
		t.Fatal(err)
	}
	s := storageOf(t, out)
	if s["pg_host"] != "127.0.0.1" || s["pg_user"] != "kong" || s["pg_database"] != "kong" || s["pg_port"] != 5432.0 {
		t.Errorf("storage = %v, want Kong's defaults", s)
	}
	if !strings.Contains(formatWarnings(warnings), "connecting with Kong's defaults") {
		t.Errorf("no warning about the defaults:\n%s", formatWarnings(warnings))
	}
}
