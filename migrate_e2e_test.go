package caddyacme

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/kongcompat"
)

// The tests in this file are the way out of Kong, end to end, once per
// store Kong's acme plugin can keep its data in. A Kong account obtains
// real certificates from Pebble (HTTP-01 answered on the port Pebble
// validates, as Kong's plugin would), they are written into the store in
// Kong's exact layout, `caddy acme-migrate` copies them into the acme
// app's storage, and Caddy then serves them on the first handshake
// without any new order; a forced renewal (POST /acme) is ordered by
// Kong's account.

// kongData is what Kong's acme plugin holds after issuing: its account and
// a certificate per host.
type kongData struct {
	email      string
	apiURI     string
	accountPEM string // PKCS #8, as lua-resty-openssl writes it
	accountURL string
	hosts      []string
	certs      map[string]kongPair
}

type kongPair struct {
	chain, key string
	leaf       *x509.Certificate
}

// http01 answers HTTP-01 challenges on the port Pebble validates, until
// the rig's Caddy takes that port over.
type http01 struct{ tokens sync.Map }

func (h *http01) Present(_ context.Context, c acme.Challenge) error {
	h.tokens.Store(c.Token, c.KeyAuthorization)
	return nil
}

func (h *http01) CleanUp(_ context.Context, c acme.Challenge) error {
	h.tokens.Delete(c.Token)
	return nil
}

func (h *http01) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if v, ok := h.tokens.Load(strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/")); ok {
		_, _ = io.WriteString(w, v.(string))
		return
	}
	http.NotFound(w, r)
}

// kongIssue registers an account at the rig's Pebble as Kong does (an RSA
// key, the terms agreed, contact mailto:<email>) and orders a certificate
// for each host as Kong does: one identifier per order, HTTP-01. Odd
// hosts get an RSA key (Kong's cert_type rsa), even ones ECDSA P-256
// (ecc).
func kongIssue(t *testing.T, r *rig, email string, hosts ...string) *kongData {
	t.Helper()
	ctx := t.Context()
	accountKey, err := rsa.GenerateKey(rand.Reader, 2048) // Kong: 4096 bits
	if err != nil {
		t.Fatal(err)
	}
	solver := &http01{}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(r.httpPort))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: solver, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	client := &acmez.Client{
		Client:           &acme.Client{Directory: r.pebble.DirectoryURL, HTTPClient: r.pebble.Client()},
		ChallengeSolvers: map[string]acmez.Solver{acme.ChallengeTypeHTTP01: solver},
	}
	acct, err := client.NewAccount(ctx, acme.Account{Contact: []string{"mailto:" + email}, TermsOfServiceAgreed: true, PrivateKey: accountKey})
	if err != nil {
		t.Fatalf("registering Kong's account: %v", err)
	}
	kd := &kongData{email: email, apiURI: r.pebble.DirectoryURL, accountPEM: migPKCS8(t, accountKey), accountURL: acct.Location, hosts: hosts, certs: make(map[string]kongPair)}
	for i, host := range hosts {
		var key crypto.Signer
		if i%2 == 1 {
			key, err = rsa.GenerateKey(rand.Reader, 2048)
		} else {
			key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		if err != nil {
			t.Fatal(err)
		}
		chains, err := client.ObtainCertificateForSANs(ctx, acct, key, []string{host})
		if err != nil {
			t.Fatalf("Kong's order for %s: %v\n%s", host, err, r.pebble.Log())
		}
		block, _ := pem.Decode(chains[0].ChainPEM)
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		kd.certs[host] = kongPair{chain: string(chains[0].ChainPEM), key: migPKCS8(t, key), leaf: leaf}
	}
	return kd
}

func migPKCS8(t *testing.T, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// kongJSON encodes a value as lua-cjson does (every / escaped).
func kongJSON(t *testing.T, v map[string]string) string {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(strings.TrimSpace(b.String()), "/", `\/`)
}

// entries are the storage entries Kong's plugin writes in DB-less and
// hybrid mode (client.lua): the account, and per host the certificate and
// key, and the renew config. With dbMode the certificates are left out
// (they go to Kong's certificates and snis tables).
func (kd *kongData) entries(t *testing.T, dbMode bool) map[string]string {
	t.Helper()
	e := map[string]string{
		"kong_acme:account:" + kd.apiURI + ":" + base64.StdEncoding.EncodeToString([]byte(kd.email)): kongJSON(t, map[string]string{"key": kd.accountPEM}),
		"kong_acme:renew_last_run": time.Now().Format("2006-01-02 15:04:05"),
	}
	for host, c := range kd.certs {
		if !dbMode {
			e["kong_acme:cert_key:"+host] = kongJSON(t, map[string]string{"key": c.key, "cert": c.chain})
		}
		e["kong_acme:renew_config:"+host] = fmt.Sprintf(`{"host":"%s","expire_at":%d}`, host, time.Now().Add(90*24*time.Hour).Unix())
	}
	return e
}

// migrateAndServe migrates kd with opts into storage (the acme app's
// storage module), checks the report, then runs Caddy on that storage:
// every migrated certificate is served on the first handshake without an
// order, and a forced renewal is ordered by Kong's account.
func migrateAndServe(t *testing.T, r *rig, kd *kongData, opts kongcompat.MigrateOptions, storage map[string]any) *App {
	t.Helper()
	cfg := r.config(r.acme(map[string]any{"account_email": kd.email, "domains": []string{"*.kong.example.com"}, "storage": storage}), nil)
	opts.ConfigJSON, opts.Apply = cfg, true
	var out bytes.Buffer
	opts.Out = &out
	report, err := kongcompat.Migrate(t.Context(), opts)
	if err != nil {
		t.Fatalf("migrating: %v\n%s", err, out.String())
	}
	t.Logf("report:\n%s", out.String())
	migCheckReport(t, out.String(), kd)
	if it, _ := report.Find("account", kd.email); it.Action != kongcompat.ActionCopy || !strings.Contains(it.Reason, kd.accountURL) {
		t.Fatalf("account: %+v, want copied with %s", it, kd.accountURL)
	}
	for _, host := range kd.hosts {
		if it, _ := report.Find("certificate", host); it.Action != kongcompat.ActionCopy {
			t.Fatalf("%s: %+v, want copied", host, it)
		}
	}
	return serveMigrated(t, r, kd, cfg)
}

// serveMigrated runs cfg and checks handshakes and renewal.
func serveMigrated(t *testing.T, r *rig, kd *kongData, cfg []byte) *App {
	t.Helper()
	orders := r.pebble.Orders()
	app := r.load(cfg)
	for _, host := range kd.hosts {
		chain := r.mustHandshake(host)
		if !chain[0].Equal(kd.certs[host].leaf) {
			t.Fatalf("%s: Caddy serves another certificate than Kong's (serial %s, Kong's %s)", host, chain[0].SerialNumber, kd.certs[host].leaf.SerialNumber)
		}
	}
	if n := r.pebble.Orders(); n != orders {
		t.Fatalf("serving the migrated certificates placed %d new order(s), want none", n-orders)
	}

	// POST /acme for an existing certificate renews it
	host := kd.hosts[0]
	if err := app.Order(t.Context(), host); err != nil {
		t.Fatalf("renewing %s: %v\n%s", host, err, r.pebble.Log())
	}
	list := r.pebble.OrderList()
	last := list[len(list)-1]
	if len(list) != orders+1 || len(last.Identifiers) != 1 || last.Identifiers[0] != host {
		t.Fatalf("orders after the renewal: %+v", list[orders:])
	}
	if last.Account != kd.accountURL {
		t.Fatalf("the renewal was ordered by account %q, want Kong's account %s", last.Account, kd.accountURL)
	}
	if renewed := r.mustHandshake(host); renewed[0].SerialNumber.Cmp(kd.certs[host].leaf.SerialNumber) == 0 {
		t.Fatal("still serving Kong's certificate after the renewal")
	}
	return app
}

// migCheckReport checks that a report shows no key material.
func migCheckReport(t *testing.T, out string, kd *kongData) {
	t.Helper()
	if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, "BEGIN") {
		t.Errorf("the report holds PEM data:\n%s", out)
	}
	keys := []string{kd.accountPEM}
	for _, c := range kd.certs {
		keys = append(keys, c.key)
	}
	for _, k := range keys {
		for _, line := range strings.Split(k, "\n") {
			if len(line) >= 40 && strings.Contains(out, line) {
				t.Fatalf("the report holds a line of a private key:\n%s", out)
			}
		}
	}
}

func migWriteFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// kongPlugin is a declarative file with the acme plugin for kd and the
// given storage lines (indented for storage_config).
func kongPlugin(kd *kongData, storage string) string {
	return fmt.Sprintf(`_format_version: "3.0"
plugins:
- name: acme
  config:
    account_email: %s
    api_uri: %s
    domains: ["*.kong.example.com"]
    cert_type: ecc
%s`, kd.email, kd.apiURI, storage)
}

var migHosts = []string{"a.kong.example.com", "b.kong.example.com"}

// TestMigrateRedisEndToEnd also runs the migration through the real CLI:
// a dry run that writes nothing, --apply, and a second --apply that
// copies nothing.
func TestMigrateRedisEndToEnd(t *testing.T) {
	rd := testenv.StartRedis(t, testenv.RedisOptions{})
	r := newRig(t, testenv.PebbleOptions{})
	kd := kongIssue(t, r, "ops@kong.example.com", migHosts...)
	const ns = "kong-prod:"
	ctx := context.Background()
	client := rd.Client(t)
	for k, v := range kd.entries(t, false) {
		if err := client.Set(ctx, ns+k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	host, port, _ := net.SplitHostPort(rd.Addr)
	kongFile := migWriteFile(t, "kong.yml", kongPlugin(kd, fmt.Sprintf(`    storage: redis
    storage_config:
      redis:
        host: %s
        port: %s
        extra_options:
          namespace: "%s"
`, host, port, ns)))
	storage := map[string]any{"module": "acme_redis", "addresses": []string{rd.Addr}, "key_prefix": "caddy-acme:"}
	cfg := r.config(r.acme(map[string]any{"account_email": kd.email, "domains": []string{"*.kong.example.com"}, "storage": storage}), nil)
	cfgFile := migWriteFile(t, "caddy.json", string(cfg))

	stdout, _ := kongCLI(t, "acme-migrate", "--from", kongFile, "--config", cfgFile)
	migCheckReport(t, stdout, kd)
	for _, want := range []string{
		"copy   account ops@kong.example.com: Kong's account key; with --apply",
		"copy   certificate a.kong.example.com: expires ",
		"(from redis " + rd.Addr + " key kong-prod:kong_acme:cert_key:a.kong.example.com)",
		"dry run: 3 to copy, 0 skipped, 0 failed",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("dry run: no %q in:\n%s", want, stdout)
		}
	}
	if keys, err := client.Keys(ctx, "caddy-acme:*").Result(); err != nil || len(keys) != 0 {
		t.Fatalf("the dry run wrote %v (%v)", keys, err)
	}

	stdout, stderr := kongCLI(t, "acme-migrate", "--from", kongFile, "--config", cfgFile, "--apply")
	migCheckReport(t, stdout, kd)
	migCheckReport(t, stderr, kd)
	for _, want := range []string{
		"copied account ops@kong.example.com: Kong's account, which the CA knows as " + kd.accountURL,
		"copied certificate b.kong.example.com: expires ",
		"done: 3 copied, 0 skipped, 0 failed",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--apply: no %q in:\n%s", want, stdout)
		}
	}
	stdout, _ = kongCLI(t, "acme-migrate", "--from", kongFile, "--config", cfgFile, "--apply")
	if !strings.Contains(stdout, "skip   certificate a.kong.example.com: already migrated") ||
		!strings.Contains(stdout, "skip   account ops@kong.example.com: already migrated") || !strings.Contains(stdout, "done: 0 copied, 3 skipped") {
		t.Errorf("second --apply:\n%s", stdout)
	}
	serveMigrated(t, r, kd, cfg)
}

// TestMigrateConsulEndToEnd: Kong's Consul layout (kv_path, / mangled to
// - in the account's key) into acme_consul on the same Consul.
func TestMigrateConsulEndToEnd(t *testing.T) {
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	r := newRig(t, testenv.PebbleOptions{})
	kd := kongIssue(t, r, "ops@kong.example.com", migHosts...)
	for k, v := range kd.entries(t, false) {
		req, _ := http.NewRequest(http.MethodPut, "http://"+c.Addr+"/v1/kv/kong/acme/"+url.PathEscape(strings.ReplaceAll(k, "/", "-")), strings.NewReader(v))
		migDo(t, req)
	}
	host, port, _ := net.SplitHostPort(c.Addr)
	kongFile := migWriteFile(t, "kong.yml", kongPlugin(kd, fmt.Sprintf(`    storage: consul
    storage_config:
      consul:
        host: %s
        port: %s
        kv_path: /kong/acme
`, host, port)))
	migrateAndServe(t, r, kd, kongcompat.MigrateOptions{From: kongFile}, map[string]any{"module": "acme_consul", "address": c.Addr, "key_prefix": "caddy-acme"})
}

// TestMigrateVaultEndToEnd: Kong's Vault KV v2 layout (mount secret, path
// kong/acme, mangled keys, data.value) into acme_vault on the same Vault.
func TestMigrateVaultEndToEnd(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	t.Setenv("KONG_VAULT_TOKEN", v.RootToken)
	r := newRig(t, testenv.PebbleOptions{})
	kd := kongIssue(t, r, "ops@kong.example.com", migHosts...)
	for k, val := range kd.entries(t, false) {
		body, _ := json.Marshal(map[string]any{"data": map[string]string{"value": val, "note": "managed by lua-resty-acme"}})
		req, _ := http.NewRequest(http.MethodPost, v.Addr+"/v1/secret/data/kong/acme/"+url.PathEscape(strings.ReplaceAll(k, "/", "-")), bytes.NewReader(body))
		req.Header.Set("X-Vault-Token", v.RootToken)
		migDo(t, req)
	}
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(v.Addr, "http://"))
	kongFile := migWriteFile(t, "kong.yml", kongPlugin(kd, fmt.Sprintf(`    storage: vault
    storage_config:
      vault:
        host: %s
        port: %s
        kv_path: secret/kong/acme
        token: "{vault://env/kong-vault-token}"
`, host, port)))
	migrateAndServe(t, r, kd, kongcompat.MigrateOptions{From: kongFile},
		map[string]any{"module": "acme_vault", "address": v.Addr, "token": v.RootToken, "path_prefix": "caddy-acme"})
}

// startKongDB starts PostgreSQL with a database holding Kong's tables and
// returns its DSN and a kong.conf for it (role as given).
func startKongDB(t *testing.T, role string) (dsn, kongConf string, pg *testenv.Postgres) {
	t.Helper()
	pg = testenv.StartPostgres(t, testenv.PostgresOptions{})
	dsn = pg.CreateDatabase(t, "kong", testenv.NonCLocale(t))
	ddl, err := os.ReadFile(filepath.Join("kongcompat", "testdata", "kong_postgres.sql"))
	if err != nil {
		t.Fatal(err)
	}
	migSQL(t, dsn, string(ddl))
	kongConf = migWriteFile(t, "kong.conf", fmt.Sprintf("database = postgres\nrole = %s\npg_host = %s\npg_port = %d\npg_user = %s\npg_database = kong\n", role, pg.Host, pg.Port, pg.User))
	return dsn, kongConf, pg
}

func migSQL(t *testing.T, dsn, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%v", err)
	}
}

// TestMigrateKongStorageEndToEnd: `kong` storage on a hybrid control
// plane, whose certificates are rows of Kong's acme_storage table, into
// acme_kong in the same table (under its own key prefix).
func TestMigrateKongStorageEndToEnd(t *testing.T) {
	dsn, kongConf, _ := startKongDB(t, "control_plane")
	r := newRig(t, testenv.PebbleOptions{})
	kd := kongIssue(t, r, "ops@kong.example.com", migHosts...)
	for k, v := range kd.entries(t, false) {
		migSQL(t, dsn, `INSERT INTO acme_storage (id, key, value, created_at) VALUES (gen_random_uuid(), $1, $2, date_trunc('second', now()))`, k, v)
	}
	kongFile := migWriteFile(t, "kong.yml", kongPlugin(kd, "    storage: kong\n"))
	migrateAndServe(t, r, kd, kongcompat.MigrateOptions{From: kongFile, KongConf: kongConf},
		map[string]any{"module": "acme_kong", "dsn": dsn, "key_prefix": "caddy-acme/"})
}

// TestMigrateDatabaseModeEndToEnd: Kong in traditional database mode,
// whose certificates are Kong certificates and snis entities tagged
// managed-by-acme, and whose account is in acme_storage; into acme_kong in
// the same database.
func TestMigrateDatabaseModeEndToEnd(t *testing.T) {
	dsn, kongConf, _ := startKongDB(t, "traditional")
	r := newRig(t, testenv.PebbleOptions{})
	kd := kongIssue(t, r, "ops@kong.example.com", migHosts...)
	for k, v := range kd.entries(t, true) {
		migSQL(t, dsn, `INSERT INTO acme_storage (id, key, value, created_at) VALUES (gen_random_uuid(), $1, $2, date_trunc('second', now()))`, k, v)
	}
	for host, c := range kd.certs { // client.lua save_dao
		var id [16]byte
		_, _ = rand.Read(id[:])
		certID := fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:])
		migSQL(t, dsn, `INSERT INTO certificates (id, created_at, cert, key, tags, ws_id) VALUES ($1, now(), $2, $3, ARRAY['managed-by-acme'], (SELECT id FROM workspaces WHERE name = 'default'))`, certID, c.chain, c.key)
		migSQL(t, dsn, `INSERT INTO snis (id, created_at, name, certificate_id, tags, ws_id) VALUES (gen_random_uuid(), now(), $1, $2, ARRAY['managed-by-acme'], (SELECT id FROM workspaces WHERE name = 'default'))`, host, certID)
	}
	kongFile := migWriteFile(t, "kong.yml", kongPlugin(kd, "    storage: kong\n"))
	migrateAndServe(t, r, kd, kongcompat.MigrateOptions{From: kongFile, KongConf: kongConf},
		map[string]any{"module": "acme_kong", "dsn": dsn, "key_prefix": "caddy-acme/"})
}

func migDo(t *testing.T, req *http.Request) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s: %s %s", req.Method, req.URL, resp.Status, body)
	}
}
