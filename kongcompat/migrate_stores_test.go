package kongcompat

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// The tests in this file read each of Kong's other stores, seeded as Kong
// writes them, into file storage. The ACME account's lookup at a CA is
// covered by TestMigrateRedis and the root package's end-to-end tests;
// here the CA is a closed port, which also shows what happens when the CA
// cannot be reached.

// closedCA is an ACME directory URL on a port nobody listens on.
func closedCA(t *testing.T) string {
	return "https://127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)) + "/directory"
}

// checkCopied checks that the certificate of host in dir's file storage
// is the chain Kong had.
func checkCopied(t *testing.T, dir, directory, host, chain string) {
	t.Helper()
	data, err := (&certmagic.FileStorage{Path: dir}).Load(context.Background(), certmagic.StorageKeys.SiteCert(issuerKey(directory), host))
	if err != nil {
		t.Fatalf("%s not in the target: %v", host, err)
	}
	if strings.TrimSpace(string(data)) != strings.TrimSpace(chain) {
		t.Fatalf("%s: the target holds another chain", host)
	}
}

// TestMigrateConsul reads Kong's Consul layout (kv_path with a slash
// inside, / mangled to - in keys, the TTL in the flags, an ACL token given
// as a Kong vault reference), and shows a CA that cannot be reached: the
// certificates are copied, the account is reported as failed with what to
// do, and the token is never printed.
func TestMigrateConsul(t *testing.T) {
	const token = "3d0a5a3c-consul-acl-token-7e41"
	c := testenv.StartConsul(t, testenv.ConsulOptions{ACLToken: token})
	t.Setenv("KONG_CONSUL_TOKEN", token)
	const kvPath = "/kong/acme"
	const email = "ops@example.com"
	api := closedCA(t)
	host, port, _ := net.SplitHostPort(c.Addr)
	kongYAML := writeFile(t, "kong.yml", fmt.Sprintf(`_format_version: "3.0"
plugins:
- name: acme
  config:
    account_email: %s
    api_uri: %s
    domains: ["*.example.com"]
    storage: consul
    storage_config:
      consul:
        host: %s
        port: %s
        kv_path: %s
        token: "{vault://env/kong-consul-token}"
`, email, api, host, port, kvPath))

	ca := newTestIssuer(t)
	accountPEM := pkcs8PEM(t, mustRSA(t))
	consulSet(t, c, kvPath, kongAccountKey(api, email), kongAccountValue(t, accountPEM), 0)
	okChain, okKey := ca.issue(t, "ok.example.com", time.Now().Add(60*24*time.Hour))
	consulSet(t, c, kvPath, kongCertKeyPrefix+"ok.example.com", kongCertValue(t, okChain, okKey), 0)
	consulSet(t, c, kvPath, kongRenewConfigPrefix+"ok.example.com", kongRenewConfig("ok.example.com"), 0)
	// a key whose TTL (the flags) has passed, and one whose TTL has not
	chain, key := ca.issue(t, "ttl.example.com", time.Now().Add(60*24*time.Hour))
	consulSet(t, c, kvPath, kongCertKeyPrefix+"ttl.example.com", kongCertValue(t, chain, key), -time.Second)
	liveChain, liveKey := ca.issue(t, "live.example.com", time.Now().Add(60*24*time.Hour))
	consulSet(t, c, kvPath, kongCertKeyPrefix+"live.example.com", kongCertValue(t, liveChain, liveKey), time.Hour)
	consulSet(t, c, kvPath, "tok#http-01", "tok.thumb", time.Hour)

	dir := t.TempDir()
	opts := MigrateOptions{From: kongYAML, ConfigJSON: targetJSON(t, dir, map[string]any{"api_uri": api})}
	r, out := migrateRun(t, opts)
	noSecrets(t, out, token, accountPEM, okKey, liveKey)
	wantItem(t, r, "account", email, ActionCopy, "Kong's account key")
	it := wantItem(t, r, "certificate", "ok.example.com", ActionCopy, "expires ")
	if want := "consul " + c.Addr + " key kong/acme/kong_acme:cert_key:ok.example.com"; it.From != want {
		t.Errorf("from %q, want %q", it.From, want)
	}
	wantItem(t, r, "certificate", "live.example.com", ActionCopy, "expires ")
	if _, ok := r.Find("certificate", "ttl.example.com"); ok {
		t.Error("a key whose Consul flags say it expired is reported")
	}
	if it, _ := r.Find("account", email); !strings.Contains(it.From, "kong_acme:account:https:--127.0.0.1:") {
		t.Errorf("the account's key is not mangled as Kong's: %s", it.From)
	}

	opts.Apply = true
	r, out = migrateRun(t, opts)
	noSecrets(t, out, token, accountPEM, okKey, liveKey)
	acct := wantItem(t, r, "account", email, ActionFail, "looking the account up at "+api+" with Kong's key failed")
	for _, want := range []string{"run again with --apply once the CA can be reached", "account_key", "--account-key-file"} {
		if !strings.Contains(acct.Reason, want) {
			t.Errorf("the failure does not say %q: %s", want, acct.Reason)
		}
	}
	wantItem(t, r, "certificate", "ok.example.com", ActionCopy, "")
	checkCopied(t, dir, api, "ok.example.com", okChain)
	checkCopied(t, dir, api, "live.example.com", liveChain)
}

// TestMigrateVault reads Kong's Vault KV v2 layout: kv_path
// secret/kong/acme (mount secret, path kong/acme), keys with / mangled to
// - (the account's, whose key holds the api_uri), the value in data.value
// next to lua-resty-acme's note, and a TTL as delete_version_after, after
// which Vault soft-deletes the version.
func TestMigrateVault(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	t.Setenv("KONG_VAULT_TOKEN", v.RootToken)
	const kvPath = "secret/kong/acme"
	const email = "Ops@Example.com"
	api := closedCA(t)
	u := strings.TrimPrefix(v.Addr, "http://")
	host, port, _ := net.SplitHostPort(u)
	kongYAML := writeFile(t, "kong.yml", fmt.Sprintf(`_format_version: "3.0"
plugins:
- name: acme
  config:
    account_email: %s
    api_uri: %s
    allow_any_domain: true
    storage: vault
    storage_config:
      vault:
        host: %s
        port: %s
        kv_path: %s
        token: "{vault://env/kong-vault-token}"
`, email, api, host, port, kvPath))

	ca := newTestIssuer(t)
	accountPEM := pkcs8PEM(t, mustRSA(t))
	vaultSet(t, v, kvPath, kongAccountKey(api, email), kongAccountValue(t, accountPEM), 0)
	okChain, okKey := ca.issue(t, "ok.example.net", time.Now().Add(60*24*time.Hour))
	vaultSet(t, v, kvPath, kongCertKeyPrefix+"ok.example.net", kongCertValue(t, okChain, okKey), 0)
	chain, key := ca.issue(t, "ttl.example.net", time.Now().Add(60*24*time.Hour))
	vaultSet(t, v, kvPath, kongCertKeyPrefix+"ttl.example.net", kongCertValue(t, chain, key), time.Second)
	vaultSet(t, v, kvPath, kongRenewConfigPrefix+"ok.example.net", kongRenewConfig("ok.example.net"), 0)
	time.Sleep(1500 * time.Millisecond) // Vault deletes ttl.example.net's version

	dir := t.TempDir()
	opts := MigrateOptions{From: kongYAML, ConfigJSON: targetJSON(t, dir, map[string]any{"api_uri": api, "allow_any_domain": true, "domains": nil})}
	r, out := migrateRun(t, opts)
	noSecrets(t, out, v.RootToken, accountPEM, okKey)
	it := wantItem(t, r, "account", email, ActionCopy, "Kong's account key")
	if want := "secret/data/kong/acme/kong_acme:account:https:--127.0.0.1:"; !strings.Contains(it.From, want) {
		t.Errorf("account from %q, want the mangled key under %s", it.From, want)
	}
	it = wantItem(t, r, "certificate", "ok.example.net", ActionCopy, "expires ")
	if want := "vault " + v.Addr + " secret secret/data/kong/acme/kong_acme:cert_key:ok.example.net"; it.From != want {
		t.Errorf("from %q, want %q", it.From, want)
	}
	if _, ok := r.Find("certificate", "ttl.example.net"); ok {
		t.Error("a version Vault deleted after its delete_version_after is reported")
	}
	opts.Apply = true
	migrateRun(t, opts)
	checkCopied(t, dir, api, "ok.example.net", okChain)
}

// writeKongConf writes a kong.conf for the server.
func writeKongConf(t *testing.T, pg *testenv.Postgres, database, role string) string {
	t.Helper()
	return writeFile(t, "kong.conf", fmt.Sprintf(`# Kong configuration
database = postgres
role = %s              # comments as Kong allows them
pg_host = %s
pg_port = %d
pg_user = %s
pg_database = %s
`, role, pg.Host, pg.Port, pg.User, database))
}

// TestMigrateKongStorage reads `kong` storage on a hybrid control plane:
// Kong's acme_storage table, with the certificates as cert_key rows
// (database mode's tables are not used there), rows past their ttl
// hidden as Kong's selects hide them, kong.conf given with --kong-conf
// and the password in KONG_PG_PASSWORD, as Kong reads it.
func TestMigrateKongStorage(t *testing.T) {
	const password = "pg-s3cret-pw-71c0"
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{Password: password})
	dsn := pg.CreateDatabase(t, "kong", testenv.NonCLocale(t))
	pgExec(t, dsn, kongDDL(t))
	t.Setenv("KONG_PG_PASSWORD", password)
	const email = "ops@example.com"
	api := closedCA(t)
	kongJSON := writeFile(t, "plugin.json", fmt.Sprintf(`{
  "id": "0bd4c0ee-9a1c-4c2e-a5a4-0e0f1a7c3e11",
  "name": "acme",
  "enabled": true,
  "protocols": ["grpc", "grpcs", "http", "https"],
  "config": {"account_email": %q, "api_uri": %q, "domains": ["*.example.com"], "storage": "kong", "storage_config": {"kong": {}}}
}`, email, api))

	ca := newTestIssuer(t)
	accountPEM := pkcs8PEM(t, mustRSA(t))
	acmeStorageSet(t, dsn, kongAccountKey(api, email), kongAccountValue(t, accountPEM), 0)
	okChain, okKey := ca.issue(t, "ok.example.com", time.Now().Add(60*24*time.Hour))
	acmeStorageSet(t, dsn, kongCertKeyPrefix+"ok.example.com", kongCertValue(t, okChain, okKey), 0)
	chain, key := ca.issue(t, "ttl.example.com", time.Now().Add(60*24*time.Hour))
	acmeStorageSet(t, dsn, kongCertKeyPrefix+"ttl.example.com", kongCertValue(t, chain, key), -time.Minute)
	acmeStorageSet(t, dsn, "kong_acme:update_lock:ok.example.com", "placeholder", 30*time.Second)
	// a key that LIKE 'kong_acme:cert_key:%' would match, with _ as a wildcard
	chain, key = ca.issue(t, "x.example.com", time.Now().Add(60*24*time.Hour))
	acmeStorageSet(t, dsn, "kong_acmeXcert_key:x.example.com", kongCertValue(t, chain, key), 0)

	dir := t.TempDir()
	opts := MigrateOptions{
		From:       kongJSON,
		KongConf:   writeKongConf(t, pg, "kong", "control_plane"),
		ConfigJSON: targetJSON(t, dir, map[string]any{"api_uri": api}),
		LookupEnv:  envWith(map[string]string{"KONG_PG_PASSWORD": password}),
	}
	r, out := migrateRun(t, opts)
	noSecrets(t, out, password, accountPEM, okKey)
	wantItem(t, r, "account", email, ActionCopy, "Kong's account key")
	it := wantItem(t, r, "certificate", "ok.example.com", ActionCopy, "expires ")
	if want := "postgres 127.0.0.1:" + strconv.Itoa(pg.Port) + "/kong table acme_storage key kong_acme:cert_key:ok.example.com"; it.From != want {
		t.Errorf("from %q, want %q", it.From, want)
	}
	for _, name := range []string{"ttl.example.com", "x.example.com"} {
		if _, ok := r.Find("certificate", name); ok {
			t.Errorf("%s is reported", name)
		}
	}
	opts.Apply = true
	migrateRun(t, opts)
	checkCopied(t, dir, api, "ok.example.com", okChain)
}

// TestMigrateDatabaseMode reads what Kong's acme plugin saved in
// traditional database mode: certificates rows tagged managed-by-acme
// (tags text[]) with their snis, next to the account in acme_storage.
// Untagged certificates are the user's and are not read; a tagged one
// without SNI, one whose key is a Kong vault reference, and the alternate
// certificate (cert_alt) of a row are reported.
func TestMigrateDatabaseMode(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	dsn := pg.CreateDatabase(t, "kong", "")
	pgExec(t, dsn, kongDDL(t))
	const email = "ops@example.com"
	api := closedCA(t)
	kongYAML := writeFile(t, "kong.yml", fmt.Sprintf(`_format_version: "3.0"
plugins:
- name: acme
  config:
    account_email: %s
    api_uri: %s
    domains: ["*.example.com"]
    storage: kong
`, email, api))

	ca := newTestIssuer(t)
	accountPEM := pkcs8PEM(t, mustRSA(t))
	acmeStorageSet(t, dsn, kongAccountKey(api, email), kongAccountValue(t, accountPEM), 0)
	acmeStorageSet(t, dsn, kongRenewConfigPrefix+"ok.example.com", kongRenewConfig("ok.example.com"), 0)
	okChain, okKey := ca.issue(t, "ok.example.com", time.Now().Add(60*24*time.Hour))
	kongSaveDAO(t, dsn, "ok.example.com", okChain, okKey)
	// the user's own certificate: not Kong's acme plugin's
	chain, key := ca.issue(t, "mine.example.com", time.Now().Add(60*24*time.Hour))
	kongSaveDAO(t, dsn, "mine.example.com", chain, key, "team-web")
	chain, key = ca.issue(t, "nosni.example.com", time.Now().Add(60*24*time.Hour))
	nosni := kongSaveDAO(t, dsn, "", chain, key)
	chain, _ = ca.issue(t, "vaulted.example.com", time.Now().Add(60*24*time.Hour))
	kongSaveDAO(t, dsn, "vaulted.example.com", chain, "{vault://hcv/kong/vaulted-key}")
	// a row with an alternate certificate that expires later
	altChain, altKey := ca.issue(t, "alt.example.com", time.Now().Add(80*24*time.Hour))
	chain, key = ca.issue(t, "alt.example.com", time.Now().Add(50*24*time.Hour))
	id := kongSaveDAO(t, dsn, "alt.example.com", chain, key)
	pgExec(t, dsn, `UPDATE certificates SET cert_alt = $1, key_alt = $2 WHERE id = $3`, altChain, altKey, id)

	dir := t.TempDir()
	opts := MigrateOptions{
		From:       kongYAML,
		KongConf:   writeKongConf(t, pg, "kong", "traditional"),
		ConfigJSON: targetJSON(t, dir, map[string]any{"api_uri": api}),
		LookupEnv:  envWith(nil),
	}
	r, out := migrateRun(t, opts)
	t.Logf("report:\n%s", out)
	noSecrets(t, out, accountPEM, okKey, altKey)
	wantItem(t, r, "account", email, ActionCopy, "Kong's account key")
	it := wantItem(t, r, "certificate", "ok.example.com", ActionCopy, "expires ")
	if !strings.Contains(it.From, "certificates id ") || !strings.Contains(it.From, "via snis name ok.example.com") {
		t.Errorf("from %q", it.From)
	}
	wantItem(t, r, "certificate", "(id "+nosni+")", ActionSkip, "no SNI names it")
	wantItem(t, r, "certificate", "vaulted.example.com", ActionSkip, "Kong vault reference")
	if _, ok := r.Find("certificate", "mine.example.com"); ok {
		t.Error("a certificate not tagged managed-by-acme is reported")
	}
	var alt []MigrateItem
	for _, it := range r.Items {
		if it.Name == "alt.example.com" {
			alt = append(alt, it)
		}
	}
	if len(alt) != 2 || alt[0].Action != ActionSkip || !strings.Contains(alt[0].Reason, "superseded") ||
		alt[1].Action != ActionCopy || !strings.Contains(alt[1].From, "(cert_alt, key_alt)") {
		t.Errorf("alt.example.com: %+v", alt)
	}
	opts.Apply = true
	migrateRun(t, opts)
	checkCopied(t, dir, api, "ok.example.com", okChain)
	checkCopied(t, dir, api, "alt.example.com", altChain)
}

// TestMigrateShm: Kong's shared memory cannot be read; without a database
// there is nothing to copy, which the report says. The target defaults to
// the config adapted from the Kong file.
func TestMigrateShm(t *testing.T) {
	kongYAML := writeFile(t, "kong.yml", `_format_version: "3.0"
plugins:
- name: acme
  config:
    account_email: ops@example.com
    tos_accepted: true
    domains: ["example.com"]
`)
	r, out := migrateRun(t, MigrateOptions{From: kongYAML, LookupEnv: envWith(nil)})
	wantItem(t, r, "account", "ops@example.com", ActionSkip, "shared memory")
	if r.Count(ActionCopy) != 0 || !strings.Contains(out, "to the config adapted from "+kongYAML+": Caddy's default storage") {
		t.Errorf("report:\n%s", out)
	}
}

// TestMigrateErrors: what stops the migration before it starts.
func TestMigrateErrors(t *testing.T) {
	kongYAML := writeFile(t, "kong.yml", `_format_version: "3.0"
plugins:
- name: acme
  config:
    account_email: ops@example.com
    tos_accepted: true
`)
	for name, tc := range map[string]struct {
		opts MigrateOptions
		want string
	}{
		"no from":       {MigrateOptions{}, "--from is required"},
		"missing file":  {MigrateOptions{From: kongYAML + ".missing"}, "reading Kong's configuration"},
		"no acme app":   {MigrateOptions{From: kongYAML, ConfigJSON: []byte(`{"apps":{}}`)}, "has no acme app"},
		"invalid kong":  {MigrateOptions{From: writeFile(t, "bad.yml", "_format_version: \"3.0\"\nplugins:\n- name: acme\n  config:\n    account_email: notaemail\n")}, "invalid value: notaemail"},
		"bad api_uri":   {MigrateOptions{From: kongYAML, ConfigJSON: []byte(`{"apps":{"acme":{"account_email":"a@b.c","api_uri":"ftp://x"}}}`)}, "api_uri: invalid URL"},
		"unknown store": {MigrateOptions{From: kongYAML, ConfigJSON: []byte(`{"apps":{"acme":{"account_email":"a@b.c","tos_accepted":true,"storage":{"module":"nope"}}}}`)}, "loading the target storage"},
		// the target's settings are checked as the app checks them
		"terms not accepted": {MigrateOptions{From: kongYAML, ConfigJSON: []byte(`{"apps":{"acme":{"account_email":"a@b.c"}}}`)}, "acme app: tos_accepted: terms of service must be accepted"},
		"bad domain":         {MigrateOptions{From: kongYAML, ConfigJSON: []byte(`{"apps":{"acme":{"account_email":"a@b.c","tos_accepted":true,"domains":["a_b.example.com"]}}}`)}, "acme app: domains: domains[0]: domain \"a_b.example.com\""},
	} {
		t.Run(name, func(t *testing.T) {
			tc.opts.LookupEnv = envWith(nil)
			_, err := Migrate(t.Context(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func envWith(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// TestMigrateRedisTLS connects to Kong's Redis as Kong did: TLS with
// ssl_verify, server_name, and the CA from kong.conf's
// lua_ssl_trusted_certificate, with an ACL user.
func TestMigrateRedisTLS(t *testing.T) {
	rd := testenv.StartRedis(t, testenv.RedisOptions{TLS: true, ACLUser: "kong", ACLPass: "acl-pass-5b7d"})
	host, port, _ := net.SplitHostPort(rd.Addr)
	api := closedCA(t)
	kongYAML := writeFile(t, "kong.yml", fmt.Sprintf(`_format_version: "3.0"
plugins:
- name: acme
  config:
    account_email: ops@example.com
    api_uri: %s
    domains: ["*.example.com"]
    storage: redis
    storage_config:
      redis:
        host: %s
        port: %s
        username: kong
        password: acl-pass-5b7d
        ssl: true
        ssl_verify: true
        server_name: %s
`, api, host, port, testenv.RedisServerName))
	conf := writeFile(t, "kong.conf", "database = off\nlua_ssl_trusted_certificate = system,"+rd.CAFile+"\n")
	ca := newTestIssuer(t)
	chain, key := ca.issue(t, "tls.example.com", time.Now().Add(30*24*time.Hour))
	redisSet(t, rd.Client(t), "", kongCertKeyPrefix+"tls.example.com", kongCertValue(t, chain, key), 0)

	r, out := migrateRun(t, MigrateOptions{From: kongYAML, KongConf: conf, ConfigJSON: targetJSON(t, t.TempDir(), map[string]any{"api_uri": api}), LookupEnv: envWith(nil)})
	noSecrets(t, out, "acl-pass-5b7d", key)
	wantItem(t, r, "certificate", "tls.example.com", ActionCopy, "expires ")
	wantItem(t, r, "account", "ops@example.com", ActionSkip, "not in Kong's storage")
}
