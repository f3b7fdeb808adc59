package appconfig

import (
	"crypto/x509"
	"encoding/base64"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// pebbleSettings returns the settings of an app ordering from p with
// accountKey.
func pebbleSettings(t *testing.T, p *testenv.Pebble, accountKey string) *Settings {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.ListenerCAPEM)
	return &Settings{Email: "ops@example.com", Directory: p.DirectoryURL, Roots: roots, AccountKey: accountKey}
}

// testIssuer returns the app's issuer for s over a file storage in dir.
func testIssuer(t *testing.T, s *Settings, dir string) *certmagic.ACMEIssuer {
	t.Helper()
	logger := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	var magic *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           logger,
	})
	t.Cleanup(cache.Stop)
	magic = certmagic.New(cache, certmagic.Config{Storage: &certmagic.FileStorage{Path: dir}, Logger: logger})
	iss := NewIssuer(magic, *s, logger)
	magic.Issuers = []certmagic.Issuer{iss}
	return iss
}

// caAccount looks the account of keyPEM up at p (nil error: the CA knows
// it).
func caAccount(t *testing.T, p *testenv.Pebble, keyPEM string) (acme.Account, error) {
	t.Helper()
	key, err := certmagic.PEMDecodePrivateKey([]byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	client := &acme.Client{Directory: p.DirectoryURL, HTTPClient: p.Client()}
	return client.GetAccount(t.Context(), acme.Account{PrivateKey: key})
}

// TestPrepareAccount registers an account_key the CA does not know (with
// and without external account binding), keeps it in storage, leaves a
// known one alone, and does nothing without account_key. Its errors name
// account_key and hold no secret.
func TestPrepareAccount(t *testing.T) {
	p := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t)})
	hmacKey := base64.RawURLEncoding.EncodeToString([]byte("caddy-acme test EAB HMAC key 256"))
	pe := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: testenv.FreePort(t), EAB: map[string]string{"kid-1": hmacKey}})

	t.Run("no account_key", func(t *testing.T) {
		dir := t.TempDir()
		s := pebbleSettings(t, p, "")
		if err := PrepareAccount(t.Context(), testIssuer(t, s, dir), s); err != nil {
			t.Fatal(err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("storage written without account_key: %v", entries)
		}
	})

	for _, tc := range []struct {
		name string
		ca   *testenv.Pebble
		eab  *acme.EAB
	}{
		{"new key", p, nil},
		{"new key with EAB", pe, &acme.EAB{KeyID: "kid-1", MACKey: hmacKey}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := testenv.NewAccountKeyPEM(t)
			if _, err := caAccount(t, tc.ca, key); err == nil {
				t.Fatal("the CA knows a key just generated")
			}
			dir := t.TempDir()
			s := pebbleSettings(t, tc.ca, key)
			s.EAB = tc.eab
			iss := testIssuer(t, s, dir)
			if err := PrepareAccount(t.Context(), iss, s); err != nil {
				t.Fatal(err)
			}
			acct, err := caAccount(t, tc.ca, key)
			if err != nil {
				t.Fatalf("the CA does not know the key after PrepareAccount: %v", err)
			}
			if acct.Status != acme.StatusValid {
				t.Fatalf("account status %q", acct.Status)
			}
			if got := testenv.StoredAccountKeys(t, dir); len(got) != 1 || got[0] != strings.TrimSpace(key) {
				t.Fatalf("stored account keys: %d, want exactly account_key", len(got))
			}

			// a second time (another node, the same storage): nothing to do
			if err := PrepareAccount(t.Context(), testIssuer(t, s, dir), s); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("known key", func(t *testing.T) {
		key := testenv.NewAccountKeyPEM(t)
		s := pebbleSettings(t, p, key)
		if err := PrepareAccount(t.Context(), testIssuer(t, s, t.TempDir()), s); err != nil {
			t.Fatal(err)
		}
		before, err := caAccount(t, p, key)
		if err != nil {
			t.Fatal(err)
		}
		// a fresh node, empty storage: the account is looked up, not registered again
		dir := t.TempDir()
		if err := PrepareAccount(t.Context(), testIssuer(t, s, dir), s); err != nil {
			t.Fatal(err)
		}
		after, err := caAccount(t, p, key)
		if err != nil || after.Location != before.Location {
			t.Fatalf("account %s after, %s before (%v)", after.Location, before.Location, err)
		}
		if got := testenv.StoredAccountKeys(t, dir); len(got) != 1 || got[0] != strings.TrimSpace(key) {
			t.Fatalf("stored account keys: %d, want exactly account_key", len(got))
		}
	})

	secretFree := func(t *testing.T, err error, key string, want ...string) {
		t.Helper()
		if err == nil {
			t.Fatal("no error")
		}
		msg := err.Error()
		for _, w := range append([]string{"account_key"}, want...) {
			if !strings.Contains(msg, w) {
				t.Errorf("error %q does not say %q", msg, w)
			}
		}
		body := strings.Split(strings.TrimSpace(key), "\n")[1]
		if strings.Contains(msg, body) || strings.Contains(msg, hmacKey) {
			t.Errorf("error %q holds a secret", msg)
		}
	}
	t.Run("EAB required, none given", func(t *testing.T) {
		key := testenv.NewAccountKeyPEM(t)
		s := pebbleSettings(t, pe, key)
		err := PrepareAccount(t.Context(), testIssuer(t, s, t.TempDir()), s)
		secretFree(t, err, key, "externalAccountRequired")
	})
	t.Run("wrong EAB key", func(t *testing.T) {
		key := testenv.NewAccountKeyPEM(t)
		s := pebbleSettings(t, pe, key)
		s.EAB = &acme.EAB{KeyID: "kid-1", MACKey: base64.RawURLEncoding.EncodeToString([]byte("not the CA's HMAC key, 32 bytes."))}
		err := PrepareAccount(t.Context(), testIssuer(t, s, t.TempDir()), s)
		secretFree(t, err, key, "kid-1")
		if err != nil && strings.Contains(err.Error(), s.EAB.MACKey) {
			t.Errorf("error %q holds the HMAC key", err)
		}
	})
	t.Run("CA unreachable", func(t *testing.T) {
		key := testenv.NewAccountKeyPEM(t)
		s := pebbleSettings(t, p, key)
		s.Directory = "https://127.0.0.1:1/dir"
		err := PrepareAccount(t.Context(), testIssuer(t, s, t.TempDir()), s)
		secretFree(t, err, key, "127.0.0.1:1")
	})
}
