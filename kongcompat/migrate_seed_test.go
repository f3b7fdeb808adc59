package kongcompat

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/mholt/acmez/v3/acme"
	goredis "github.com/redis/go-redis/v9"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// The helpers in this file write test data exactly as Kong's acme plugin
// (client.lua) and lua-resty-acme's storage adapters write it: the keys,
// the JSON values as lua-cjson encodes them (slashes escaped), the account
// key as base64 of the email, and each store's TTL mechanism.

// cjson encodes a string map as lua-cjson does: no HTML escaping, but
// every / escaped as \/.
func cjson(t testing.TB, v map[string]string) string {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(strings.TrimSpace(b.String()), "/", `\/`)
}

// kongCertValue is kong_acme:cert_key:<host>'s value.
func kongCertValue(t testing.TB, certPEM, keyPEM string) string {
	return cjson(t, map[string]string{"key": keyPEM, "cert": certPEM})
}

// kongAccountValue is kong_acme:account:…'s value.
func kongAccountValue(t testing.TB, keyPEM string) string {
	return cjson(t, map[string]string{"key": keyPEM})
}

// kongRenewConfig is kong_acme:renew_config:<host>'s value.
func kongRenewConfig(host string) string {
	return fmt.Sprintf(`{"host":"%s","expire_at":%d}`, host, time.Now().Add(90*24*time.Hour).Unix())
}

// pkcs8PEM encodes a key as lua-resty-openssl's to_PEM("private") does.
func pkcs8PEM(t testing.TB, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// testIssuer signs test certificates (a stand-in CA: the migration does
// not verify chains).
type testIssuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestIssuer(t testing.TB) *testIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kongcompat test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testIssuer{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

var serial int64 = 100

// issue returns a chain (leaf, then the CA) for host (a name, or an IP
// address), valid until notAfter, and its P-256 key as PKCS #8 PEM, as
// Kong stores them.
func (ca *testIssuer) issue(t testing.TB, host string, notAfter time.Time) (chainPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    notAfter.Add(-90 * 24 * time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})) + ca.pem, pkcs8PEM(t, key)
}

// kongAccount registers an ACME account at Pebble as Kong does (an RSA
// key, termsOfServiceAgreed, contact mailto:<email>) and returns its
// key as Kong stores it and its URL.
func kongAccount(t testing.TB, p *testenv.Pebble, email string) (keyPEM, accountURL string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048) // Kong makes 4096 bits; 2048 keeps tests fast
	if err != nil {
		t.Fatal(err)
	}
	acct := registerAccount(t, p, key, []string{"mailto:" + email})
	return pkcs8PEM(t, key), acct.Location
}

func registerAccount(t testing.TB, p *testenv.Pebble, key crypto.Signer, contact []string) acme.Account {
	t.Helper()
	c := &acme.Client{Directory: p.DirectoryURL, HTTPClient: p.Client()}
	acct, err := c.NewAccount(context.Background(), acme.Account{Contact: contact, TermsOfServiceAgreed: true, PrivateKey: key})
	if err != nil {
		t.Fatalf("registering Kong's account at Pebble: %v", err)
	}
	return acct
}

// redisSet is lua-resty-acme redis.lua's set: SET, then PEXPIRE if ttl.
func redisSet(t testing.TB, c *goredis.Client, namespace, key, value string, ttl time.Duration) {
	t.Helper()
	ctx := context.Background()
	if err := c.Set(ctx, namespace+key, value, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if ttl > 0 {
		if err := c.PExpire(ctx, namespace+key, ttl).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// consulSet is consul.lua's set: PUT <base><mangled key>[?flags=<expiry
// in ms>], the value as the body, the token in X-Consul-Token.
func consulSet(t testing.TB, c *testenv.Consul, kvPath, key, value string, ttl time.Duration) {
	t.Helper()
	u := "http://" + c.Addr + "/v1/kv/" + strings.Trim(kvPath, "/") + "/" + url.PathEscape(mangle(key))
	if ttl != 0 {
		u += "?flags=" + strconv.FormatInt(time.Now().Add(ttl).UnixMilli(), 10)
	}
	req, _ := http.NewRequest(http.MethodPut, u, strings.NewReader(value))
	if c.Token != "" {
		req.Header.Set("X-Consul-Token", c.Token)
	}
	mustHTTP(t, req, "true")
}

// vaultSet is vault.lua's set: the TTL as the metadata's
// delete_version_after (in ms), then the data, {"value": v, "note": …}.
func vaultSet(t testing.TB, v *testenv.Vault, kvPath, key, value string, ttl time.Duration) {
	t.Helper()
	mount, rest, _ := strings.Cut(strings.Trim(kvPath, "/"), "/")
	base := v.Addr + "/v1/" + mount
	suffix := "/" + url.PathEscape(mangle(key))
	if rest != "" {
		suffix = "/" + rest + suffix
	}
	post := func(u string, body any) {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(http.MethodPost, u, bytes.NewReader(b))
		req.Header.Set("X-Vault-Token", v.RootToken)
		mustHTTP(t, req, "")
	}
	if ttl > 0 {
		post(base+"/metadata"+suffix, map[string]string{"delete_version_after": strconv.FormatInt(ttl.Milliseconds(), 10) + "ms"})
	}
	post(base+"/data"+suffix, map[string]any{"data": map[string]string{"value": value, "note": "managed by lua-resty-acme"}})
}

func mustHTTP(t testing.TB, req *http.Request, want string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 || (want != "" && strings.TrimSpace(string(body)) != want) {
		t.Fatalf("%s %s: %s %s", req.Method, req.URL.Path, resp.Status, body)
	}
}

// kongDDL creates Kong's tables the migration reads (from Kong's
// PostgreSQL migrations: core 000_base and later, acme 000_base_acme and
// 001_280_to_300).
func kongDDL(t testing.TB) string {
	t.Helper()
	ddl, err := os.ReadFile(filepath.Join("testdata", "kong_postgres.sql"))
	if err != nil {
		t.Fatal(err)
	}
	return string(ddl)
}

// pgExec runs SQL with arguments on dsn.
func pgExec(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// acmeStorageSet is the kong storage adapter's set (the acme_storage
// DAO's upsert_by_key with a ttl): the row with created_at and the
// absolute expiry in ttl.
func acmeStorageSet(t testing.TB, dsn, key, value string, ttl time.Duration) {
	t.Helper()
	var exp any
	if ttl != 0 {
		exp = time.Now().Add(ttl)
	}
	pgExec(t, dsn, `INSERT INTO acme_storage (id, key, value, created_at, ttl) VALUES (gen_random_uuid(), $1, $2, date_trunc('second', now()), $3)
		ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, ttl = EXCLUDED.ttl`, key, value, exp)
}

// kongSaveDAO is client.lua's save_dao in database mode: a certificates
// row and an snis row for host, both tagged managed-by-acme, in the
// default workspace. It returns the certificate's id.
func kongSaveDAO(t testing.TB, dsn, host, certPEM, keyPEM string, tags ...string) string {
	t.Helper()
	if len(tags) == 0 {
		tags = []string{"managed-by-acme"}
	}
	id := newUUID()
	pgExec(t, dsn, `INSERT INTO certificates (id, created_at, cert, key, tags, ws_id) VALUES ($1, date_trunc('second', now()), $2, $3, $4, (SELECT id FROM workspaces WHERE name = 'default'))`,
		id, certPEM, keyPEM, tags)
	if host != "" {
		pgExec(t, dsn, `INSERT INTO snis (id, created_at, name, certificate_id, tags, ws_id) VALUES ($1, date_trunc('second', now()), $2, $3, $4, (SELECT id FROM workspaces WHERE name = 'default'))`,
			newUUID(), host, id, tags)
	}
	return id
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// targetJSON is a Caddy config with an acme app on file system storage
// in dir.
func targetJSON(t testing.TB, dir string, app map[string]any) []byte {
	t.Helper()
	a := map[string]any{
		"account_email": "ops@example.com",
		"domains":       []string{"*.example.com"},
		"storage":       map[string]any{"module": "file_system", "root": dir},
	}
	for k, v := range app {
		if v == nil {
			delete(a, k)
			continue
		}
		a[k] = v
	}
	out, err := json.Marshal(map[string]any{"apps": map[string]any{"acme": a}})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writeFile writes a test input file.
func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// noSecrets fails if out holds key material or one of secrets.
func noSecrets(t testing.TB, out string, secrets ...string) {
	t.Helper()
	if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, "BEGIN") {
		t.Errorf("the report holds PEM data:\n%s", out)
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(out, s) {
			t.Errorf("the report holds a secret (%.6s…):\n%s", s, out)
		}
		// a line of a PEM key's base64 body
		for _, line := range strings.Split(s, "\n") {
			if len(line) >= 40 && strings.Contains(out, line) {
				t.Errorf("the report holds a line of a key:\n%s", out)
				return
			}
		}
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// mustRSA generates an account key as Kong does (RSA; 2048 bits rather
// than Kong's 4096, to keep the tests fast).
func mustRSA(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return key
}
