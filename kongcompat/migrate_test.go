package kongcompat

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// migrateRun runs Migrate and returns its report and printed output.
func migrateRun(t *testing.T, opts MigrateOptions) (*MigrateReport, string) {
	t.Helper()
	var out bytes.Buffer
	opts.Out = &out
	report, err := Migrate(t.Context(), opts)
	if err != nil {
		t.Fatalf("Migrate: %v\n%s", err, out.String())
	}
	return report, out.String()
}

// wantItem checks the report's item for kind and name.
func wantItem(t *testing.T, r *MigrateReport, kind, name, action, reason string) MigrateItem {
	t.Helper()
	it, ok := r.Find(kind, name)
	if !ok {
		t.Errorf("no report line for %s %s", kind, name)
		return it
	}
	if it.Action != action || !strings.Contains(it.Reason, reason) {
		t.Errorf("%s %s: %s %q, want %s with %q", kind, name, it.Action, it.Reason, action, reason)
	}
	return it
}

// issuerKey is the storage key part certmagic derives from a directory.
func issuerKey(dir string) string {
	return (&certmagic.ACMEIssuer{CA: dir}).IssuerKey()
}

// storedAccount returns the account certmagic finds in s for email and
// key, without asking the CA (it fails if the account is not stored).
func storedAccount(t *testing.T, s certmagic.Storage, dir, email string, keyPEM []byte) (string, error) {
	t.Helper()
	cache := certmagic.NewCache(certmagic.CacheOptions{GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return nil, errors.New("none") }, Logger: zap.NewNop()})
	defer cache.Stop()
	iss := certmagic.NewACMEIssuer(certmagic.New(cache, certmagic.Config{Storage: s, Logger: zap.NewNop()}), certmagic.ACMEIssuer{CA: dir, Email: email, Logger: zap.NewNop()})
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // storage only
	if err := iss.PreCheck(ctx, nil, false); err != nil {
		t.Fatal(err)
	}
	acct, err := iss.GetAccount(ctx, keyPEM)
	return acct.Location, err
}

func normalizedKey(t *testing.T, keyPEM string) []byte {
	t.Helper()
	k, err := certmagic.PEMDecodePrivateKey([]byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	out, err := certmagic.PEMEncodePrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMigrateRedis migrates from Kong's Redis storage (with a password,
// given as a Kong env vault reference, and a namespace) into file
// storage: every reason to skip, the dry run writing nothing, --apply
// copying the certificates and the account (looked up at a real Pebble
// with Kong's key), and a second run copying nothing.
func TestMigrateRedis(t *testing.T) {
	const password = "redis-s3cret-pw-9f2e"
	rd := testenv.StartRedis(t, testenv.RedisOptions{Password: password})
	p := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t)})
	t.Setenv("KONG_REDIS_PASSWORD", password)
	client := rd.Client(t)
	const ns = "kong1:"
	const email = "ops@example.com"

	host, port, _ := strings.Cut(rd.Addr, ":")
	kongYAML := writeFile(t, "kong.yml", fmt.Sprintf(`_format_version: "3.0"
plugins:
- name: acme
  config:
    account_email: %s
    api_uri: %s
    domains: ["*.example.com"]
    storage: redis
    storage_config:
      redis:
        host: %s
        port: %s
        password: "{vault://env/kong-redis-password}"
        extra_options:
          namespace: "%s"
`, email, p.DirectoryURL, host, port, ns))

	accountPEM, accountURL := kongAccount(t, p, email)
	set := func(key, value string, ttl time.Duration) { redisSet(t, client, ns, key, value, ttl) }
	set(kongAccountKey(p.DirectoryURL, email), kongAccountValue(t, accountPEM), 0)
	set(kongAccountKey("https://acme-staging-v02.api.letsencrypt.org/directory", email), kongAccountValue(t, accountPEM), 0)

	ca := newTestIssuer(t)
	now := time.Now()
	var keys []string
	cert := func(host string, notAfter time.Time) (string, string) {
		c, k := ca.issue(t, host, notAfter)
		keys = append(keys, k)
		return c, k
	}
	okCert, _ := cert("ok.example.com", now.Add(60*24*time.Hour))
	set(kongCertKeyPrefix+"ok.example.com", kongCertValue(t, okCert, keys[len(keys)-1]), 0)
	set(kongRenewConfigPrefix+"ok.example.com", kongRenewConfig("ok.example.com"), 0)
	c, k := cert("old.example.com", now.Add(-24*time.Hour))
	set(kongCertKeyPrefix+"old.example.com", kongCertValue(t, c, k), 0)
	set(kongCertKeyPrefix+"bad.example.com", "not json {", 0)
	c, _ = cert("mismatch.example.com", now.Add(60*24*time.Hour))
	_, k = cert("mismatch.example.com", now.Add(60*24*time.Hour))
	set(kongCertKeyPrefix+"mismatch.example.com", kongCertValue(t, c, k), 0)
	c, k = cert("other.example.org", now.Add(60*24*time.Hour))
	set(kongCertKeyPrefix+"other.example.org", kongCertValue(t, c, k), 0)
	c, k = cert("newer.example.com", now.Add(30*24*time.Hour))
	set(kongCertKeyPrefix+"newer.example.com", kongCertValue(t, c, k), 0)
	c, k = cert("older.example.com", now.Add(60*24*time.Hour))
	set(kongCertKeyPrefix+"older.example.com", kongCertValue(t, c, k), 0)
	c, k = cert("ttl.example.com", now.Add(60*24*time.Hour))
	set(kongCertKeyPrefix+"ttl.example.com", kongCertValue(t, c, k), time.Millisecond)
	set(kongRenewConfigPrefix+"gone.example.com", kongRenewConfig("gone.example.com"), 0)
	// what Kong keeps besides, and a key outside the namespace: not read
	set("kong_acme:fail_backoff:ok.example.com", fmt.Sprint(now.Unix()+300), 300*time.Second)
	set("kong_acme:update_lock:ok.example.com", "placeholder", 30*time.Second)
	set("tok123#http-01", "tok123.thumbprint", time.Hour)
	c, k = cert("outside.example.com", now.Add(60*24*time.Hour))
	redisSet(t, client, "", kongCertKeyPrefix+"outside.example.com", kongCertValue(t, c, k), 0)
	time.Sleep(20 * time.Millisecond) // ttl.example.com expires

	// the target already holds certificates for two names
	dir := t.TempDir()
	fsStore := &certmagic.FileStorage{Path: dir}
	ik := issuerKey(p.DirectoryURL)
	for name, notAfter := range map[string]time.Time{"newer.example.com": now.Add(80 * 24 * time.Hour), "older.example.com": now.Add(10 * 24 * time.Hour)} {
		c, k := cert(name, notAfter)
		for key, v := range map[string]string{
			certmagic.StorageKeys.SiteCert(ik, name):       c,
			certmagic.StorageKeys.SitePrivateKey(ik, name): k,
			certmagic.StorageKeys.SiteMeta(ik, name):       `{"sans":["` + name + `"]}`,
		} {
			if err := fsStore.Store(t.Context(), key, []byte(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	target := targetJSON(t, dir, map[string]any{"api_uri": p.DirectoryURL, "trusted_roots": []string{p.ListenerCAFile}})
	opts := MigrateOptions{From: kongYAML, ConfigJSON: target}
	secrets := append([]string{password, accountPEM}, keys...)

	t.Run("dry run", func(t *testing.T) {
		orders := p.Orders()
		r, out := migrateRun(t, opts)
		t.Logf("report:\n%s", out)
		noSecrets(t, out, secrets...)
		wantItem(t, r, "account", email, ActionCopy, "with --apply the account is looked up at "+p.DirectoryURL)
		wantItem(t, r, "certificate", "ok.example.com", ActionCopy, "expires ")
		wantItem(t, r, "certificate", "old.example.com", ActionSkip, "expired ")
		wantItem(t, r, "certificate", "bad.example.com", ActionSkip, "unparsable: not Kong's JSON")
		wantItem(t, r, "certificate", "mismatch.example.com", ActionSkip, "unparsable: the private key does not match the certificate")
		wantItem(t, r, "certificate", "other.example.org", ActionSkip, "not allowed by the app's domains")
		wantItem(t, r, "certificate", "newer.example.com", ActionSkip, "the target holds a newer certificate")
		wantItem(t, r, "certificate", "older.example.com", ActionCopy, "replaces the target's older certificate")
		wantItem(t, r, "certificate", "gone.example.com", ActionSkip, "renew config for it but no certificate")
		it := wantItem(t, r, "certificate", "ok.example.com", ActionCopy, "")
		if want := "redis " + rd.Addr + " key kong1:kong_acme:cert_key:ok.example.com"; it.From != want {
			t.Errorf("ok.example.com from %q, want %q", it.From, want)
		}
		for _, name := range []string{"ttl.example.com", "outside.example.com"} {
			if _, ok := r.Find("certificate", name); ok {
				t.Errorf("%s is reported: expired by TTL or outside the namespace, Kong does not see it", name)
			}
		}
		if !strings.Contains(out, "dry run: 3 to copy, 6 skipped, 0 failed") {
			t.Errorf("no dry run summary in:\n%s", out)
		}
		if _, err := fsStore.Load(t.Context(), certmagic.StorageKeys.SiteCert(ik, "ok.example.com")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the dry run wrote ok.example.com: %v", err)
		}
		if _, err := storedAccount(t, fsStore, p.DirectoryURL, email, normalizedKey(t, accountPEM)); err == nil {
			t.Error("the dry run wrote the account")
		}
		if p.Orders() != orders {
			t.Error("the dry run ordered")
		}
	})

	t.Run("apply", func(t *testing.T) {
		keyFile := t.TempDir() + "/kong-account.key"
		o := opts
		o.Apply, o.AccountKeyFile = true, keyFile
		r, out := migrateRun(t, o)
		t.Logf("report:\n%s", out)
		noSecrets(t, out, secrets...)
		wantItem(t, r, "account", email, ActionCopy, "Kong's account, which the CA knows as "+accountURL)
		wantItem(t, r, "certificate", "ok.example.com", ActionCopy, "expires ")
		wantItem(t, r, "certificate", "older.example.com", ActionCopy, "replaces")
		wantItem(t, r, "certificate", "newer.example.com", ActionSkip, "newer")
		if !strings.Contains(out, "copied account "+email) || !strings.Contains(out, "done: 3 copied, 6 skipped, 0 failed") {
			t.Errorf("unexpected report:\n%s", out)
		}

		loc, err := storedAccount(t, fsStore, p.DirectoryURL, email, normalizedKey(t, accountPEM))
		if err != nil || loc != accountURL {
			t.Fatalf("account in the target: %q, %v; want %s", loc, err, accountURL)
		}
		if got, err := readFile(keyFile); err != nil || !bytes.Equal(got, normalizedKey(t, accountPEM)) {
			t.Errorf("--account-key-file: %v", err)
		}

		// certmagic's layout: key, chain, metadata with the issuer's data
		data, err := fsStore.Load(t.Context(), certmagic.StorageKeys.SiteCert(ik, "ok.example.com"))
		if err != nil || !strings.Contains(string(data), "BEGIN CERTIFICATE") {
			t.Fatalf("chain: %v", err)
		}
		keyPEM, err := fsStore.Load(t.Context(), certmagic.StorageKeys.SitePrivateKey(ik, "ok.example.com"))
		if err != nil || !strings.HasPrefix(string(keyPEM), "-----BEGIN EC PRIVATE KEY-----") {
			t.Fatalf("key (as certmagic encodes it): %v %.30q", err, keyPEM)
		}
		meta, err := fsStore.Load(t.Context(), certmagic.StorageKeys.SiteMeta(ik, "ok.example.com"))
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			SANs       []string `json:"sans"`
			IssuerData struct {
				URL     *string `json:"url"`
				CA      string  `json:"ca"`
				Account string  `json:"account"`
			} `json:"issuer_data"`
		}
		if err := json.Unmarshal(meta, &res); err != nil {
			t.Fatal(err)
		}
		if len(res.SANs) != 1 || res.SANs[0] != "ok.example.com" || res.IssuerData.CA != p.DirectoryURL || res.IssuerData.Account != accountURL || res.IssuerData.URL == nil {
			t.Errorf("metadata = %s", meta)
		}
	})

	t.Run("again", func(t *testing.T) {
		o := opts
		o.Apply = true
		r, out := migrateRun(t, o)
		wantItem(t, r, "account", email, ActionSkip, "already migrated")
		wantItem(t, r, "certificate", "ok.example.com", ActionSkip, "already migrated")
		wantItem(t, r, "certificate", "older.example.com", ActionSkip, "already migrated")
		if n := r.Count(ActionCopy); n != 0 {
			t.Errorf("the second run copied %d items:\n%s", n, out)
		}
	})

	t.Run("target has another account", func(t *testing.T) {
		dir := t.TempDir()
		other, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		otherPEM := pkcs8PEM(t, other)
		registerAccount(t, p, other, []string{"mailto:" + email})
		redisSet(t, client, "other:", kongAccountKey(p.DirectoryURL, email), kongAccountValue(t, otherPEM), 0)
		o := MigrateOptions{
			From:       writeFile(t, "other.yml", strings.Replace(readString(t, kongYAML), ns, "other:", 1)),
			ConfigJSON: targetJSON(t, dir, map[string]any{"api_uri": p.DirectoryURL, "trusted_roots": []string{p.ListenerCAFile}}),
			Apply:      true,
		}
		if r, out := migrateRun(t, o); r.Count(ActionCopy) != 1 {
			t.Fatalf("saving the other account:\n%s", out)
		}
		// then Kong's account: the target's is kept
		o.From = kongYAML
		r, out := migrateRun(t, o)
		wantItem(t, r, "account", email, ActionSkip, "the target already holds another account for "+email)
		noSecrets(t, out, secrets...)
		if _, err := storedAccount(t, &certmagic.FileStorage{Path: dir}, p.DirectoryURL, email, normalizedKey(t, otherPEM)); err != nil {
			t.Errorf("the target's account was replaced: %v", err)
		}
	})

	t.Run("account without contact", func(t *testing.T) {
		// a CA that returns no contact (Let's Encrypt no longer keeps
		// email addresses): the account is still saved for account_email
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		acct := registerAccount(t, p, key, nil)
		redisSet(t, client, "nocontact:", kongAccountKey(p.DirectoryURL, email), kongAccountValue(t, pkcs8PEM(t, key)), 0)
		dir := t.TempDir()
		o := MigrateOptions{
			From:       writeFile(t, "nocontact.yml", strings.Replace(readString(t, kongYAML), ns, "nocontact:", 1)),
			ConfigJSON: targetJSON(t, dir, map[string]any{"api_uri": p.DirectoryURL, "trusted_roots": []string{p.ListenerCAFile}}),
			Apply:      true,
		}
		r, out := migrateRun(t, o)
		wantItem(t, r, "account", email, ActionCopy, acct.Location)
		if loc, err := storedAccount(t, &certmagic.FileStorage{Path: dir}, p.DirectoryURL, email, normalizedKey(t, pkcs8PEM(t, key))); err != nil || loc != acct.Location {
			t.Fatalf("account for %s: %q %v\n%s", email, loc, err, out)
		}
	})
}

func readFile(name string) ([]byte, error) { return os.ReadFile(name) }

func readString(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
