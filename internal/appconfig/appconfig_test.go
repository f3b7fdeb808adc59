package appconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"math"
	"strings"
	"testing"

	"github.com/acmekit/caddy-acme/internal/directory"
)

func TestDirectoryURL(t *testing.T) {
	for in, want := range map[string]string{
		"":                                       directory.Default,
		"https://acme-v02.api.letsencrypt.org":   "https://acme-v02.api.letsencrypt.org/directory",
		"https://acme-v02.api.letsencrypt.org/":  "https://acme-v02.api.letsencrypt.org/directory",
		"https://127.0.0.1:14000/dir":            "https://127.0.0.1:14000/dir",
		"https://acme.zerossl.com/v2/DV90":       "https://acme.zerossl.com/v2/DV90",
		"https://ca.example/acme/acme/directory": "https://ca.example/acme/acme/directory",
	} {
		got, err := directory.URL(in)
		if err != nil || got != want {
			t.Errorf("directory.URL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestKeyGenerator(t *testing.T) {
	for _, tc := range []struct {
		name string
		gen  keyGenerator
		bits int
	}{
		{"rsa2048", keyGenerator{rsaBits: 2048}, 2048},
		{"rsa3072", keyGenerator{rsaBits: 3072}, 3072},
		{"rsa4096", keyGenerator{rsaBits: 4096}, 4096},
		{"ecc", keyGenerator{ecc: true}, 256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, err := tc.gen.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			switch k := key.(type) {
			case *rsa.PrivateKey:
				if tc.gen.ecc || k.N.BitLen() != tc.bits {
					t.Fatalf("got RSA %d, want %s", k.N.BitLen(), tc.name)
				}
			case *ecdsa.PrivateKey:
				if !tc.gen.ecc || k.Curve != elliptic.P256() {
					t.Fatalf("got ECDSA %s, want %s", k.Curve.Params().Name, tc.name)
				}
			default:
				t.Fatalf("got %T", key)
			}
		})
	}
}

// TestSecretsNotInErrors: for every secret field of the app, a literal
// value with a brace fragment (which Caddy's replacer would name in its
// error) and an unset placeholder give an error that names the field and
// shows nothing of a literal value.
func TestSecretsNotInErrors(t *testing.T) {
	for _, field := range []string{"eab_hmac_key", "account_key"} {
		for _, value := range []string{"pa{QZfragment}ss", "{env.CADDY_ACME_UNSET_SECRET}"} {
			t.Run(field+"/"+value, func(t *testing.T) {
				c := Config{AccountEmail: "ops@example.com", APIURI: "https://ca.example/dir"}
				switch field {
				case "eab_hmac_key":
					c.EABKID, c.EABHMACKey = "kid", value
				case "account_key":
					c.AccountKey = value
				}
				_, err := c.Settings()
				if err == nil {
					t.Fatal("Settings succeeded")
				}
				if !strings.HasPrefix(err.Error(), field+": ") {
					t.Errorf("error %q does not name %s", err, field)
				}
				for _, frag := range []string{"QZfragment", "pa{", "}ss"} {
					if strings.Contains(err.Error(), frag) {
						t.Errorf("error %q shows %q of the secret", err, frag)
					}
				}
			})
		}
	}
}

// TestCheckFields: the checks that need no placeholder or file, the same
// for JSON, the Caddyfile and the kong adapter.
func TestCheckFields(t *testing.T) {
	nan, neg, big := math.NaN(), -1.0, 2e9
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"valid", Config{CertType: "ecc", RSAKeySize: 3072, Domains: []string{"*.example.com"}}, ""},
		{"api_uri", Config{APIURI: "ftp://x"}, "api_uri: invalid URL"},
		{"cert_type", Config{CertType: "dsa"}, `cert_type: expected "rsa" or "ecc", got "dsa"`},
		{"rsa_key_size", Config{RSAKeySize: 1024}, "rsa_key_size: expected 2048, 3072 or 4096, got 1024"},
		{"renew_threshold_days negative", Config{RenewThresholdDays: &neg}, "renew_threshold_days: must not be negative"},
		{"renew_threshold_days NaN", Config{RenewThresholdDays: &nan}, "renew_threshold_days: expected a number of 0 or more"},
		{"fail_backoff_minutes too big", Config{FailBackoffMinutes: &big}, "fail_backoff_minutes: must be at most 1e9"},
		{"http_port", Config{HTTPPort: 70000}, "http_port: expected a port between 1 and 65535, got 70000"},
		{"renew_first_delay", Config{RenewFirstDelay: -1}, "renew_first_delay: must not be negative"},
		{"cache_capacity", Config{CacheCapacity: -1}, "cache_capacity: must not be negative"},
		{"domains", Config{Domains: []string{"a.*.example.com"}}, "domains: domains[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.CheckFields()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("CheckFields: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("CheckFields = %v, want %q", err, tc.want)
			}
		})
	}
}
