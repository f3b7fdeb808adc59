package kongcompat

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/appconfig"
)

// memStore is a Kong store in memory, holding values as Kong's storage
// adapters return them (Redis's layout: keys as written, not mangled).
type memStore map[string]string

func (s memStore) where() string              { return "memory" }
func (s memStore) describe(key string) string { return "memory key " + key }
func (s memStore) close()                     {}

func (s memStore) get(_ context.Context, key string) (string, bool, error) {
	v, ok := s[key]
	return v, ok, nil
}

func (s memStore) list(_ context.Context, prefix string) ([]string, error) {
	var keys []string
	for k := range s {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// TestMigrateNamesTheAppFinds migrates certificates Kong stored under odd
// host names into file storage, then loads each one as the app would for
// a handshake: a certmagic.Config over the same storage with the issuer
// appconfig.NewIssuer makes of the same app config, asked for the name as
// the app asks for it (the SNI lowercased, without a trailing dot). So the
// migration's issuer key and storage keys are the app's.
func TestMigrateNamesTheAppFinds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		kongKey string // the host in Kong's key
		sni     string // what a client sends
	}{
		{"upper case", "Shop.EXAMPLE.com", "SHOP.example.COM"},
		{"IDN in punycode", "xn--bcher-kva.example.com", "xn--bcher-kva.example.com"},
		{"underscore", "my_host.example.com", "my_host.example.com"},
		{"IPv4 address", "192.0.2.10", "192.0.2.10"},
		// Kong keeps the SNI as sent (lowercased), so a client's trailing dot
		// ends up in its key
		{"trailing dot", "dot.example.com.", "dot.example.com."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// allow_any_domain: domains cannot hold a name with an underscore
			cfgJSON := targetJSON(t, dir, map[string]any{
				"api_uri":          "https://ca.invalid/directory", // never contacted: no account is migrated
				"allow_any_domain": true,
				"domains":          nil,
			})
			// the name the app asks storage for (the SNI lowercased, without
			// a trailing dot), which the CA put in the certificate
			name := strings.ToLower(strings.TrimSuffix(tc.sni, "."))
			chain, key := newTestIssuer(t).issue(t, name, time.Now().Add(60*24*time.Hour))
			store := memStore{kongCertKeyPrefix + tc.kongKey: kongCertValue(t, chain, key)}

			migrateCerts := func() *MigrateReport {
				t.Helper()
				cctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
				defer cancel()
				tg, err := openTarget(cctx, cfgJSON)
				if err != nil {
					t.Fatal(err)
				}
				defer tg.close()
				m := &migration{
					opts:   MigrateOptions{Apply: true, Out: io.Discard, Now: time.Now},
					report: &MigrateReport{Apply: true},
					kong:   &kongSide{},
					t:      tg,
					store:  store,
				}
				if err := m.certificates(t.Context(), ""); err != nil {
					t.Fatal(err)
				}
				return m.report
			}
			wantItem(t, migrateCerts(), "certificate", name, ActionCopy, "expires ")
			wantItem(t, migrateCerts(), "certificate", name, ActionSkip, "already migrated")

			// the app's side
			var cfg struct {
				Apps struct {
					ACME appconfig.Config `json:"acme"`
				} `json:"apps"`
			}
			if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
				t.Fatal(err)
			}
			set, err := cfg.Apps.ACME.Settings()
			if err != nil {
				t.Fatal(err)
			}
			if err := set.Allow(name); err != nil {
				t.Fatalf("the app does not serve %s: %v", name, err)
			}
			cache := certmagic.NewCache(certmagic.CacheOptions{
				GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return nil, errors.New("none") },
				Logger:           zap.NewNop(),
			})
			defer cache.Stop()
			magic := certmagic.New(cache, certmagic.Config{Storage: &certmagic.FileStorage{Path: dir}, Logger: zap.NewNop()})
			magic.Issuers = []certmagic.Issuer{appconfig.NewIssuer(magic, set, zap.NewNop())}
			got, err := magic.CacheManagedCertificate(t.Context(), name)
			if err != nil {
				t.Fatalf("the app does not find the migrated certificate of %s: %v", name, err)
			}
			pair, err := tls.X509KeyPair([]byte(chain), []byte(key))
			if err != nil {
				t.Fatal(err)
			}
			if got.Leaf == nil || !got.Leaf.Equal(pair.Leaf) {
				t.Fatalf("the app loaded another certificate for %s: %v", name, got.Names)
			}
		})
	}
}
