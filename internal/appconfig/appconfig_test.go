package appconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

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
	for _, field := range []string{"eab_hmac_key", "account_key", "fallback[0].eab_hmac_key"} {
		for _, value := range []string{"pa{QZfragment}ss", "{env.CADDY_ACME_UNSET_SECRET}"} {
			t.Run(field+"/"+value, func(t *testing.T) {
				c := Config{AccountEmail: "ops@example.com", APIURI: "https://ca.example/dir"}
				switch field {
				case "eab_hmac_key":
					c.EABKID, c.EABHMACKey = "kid", value
				case "account_key":
					c.AccountKey = value
				case "fallback[0].eab_hmac_key":
					c.Fallback = []FallbackCA{{APIURI: "https://other.example/dir", EABKID: "kid", EABHMACKey: value}}
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
		{"fail_backoff_minutes too big", Config{FailBackoffMinutes: &big}, "fail_backoff_minutes: must be at most 525600 (a year), got 2e+09"},
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

// TestCheckFieldsBounds: every bound of a number or duration field (the
// JSON path; the Caddyfile and the kong adapter check with CheckFields
// too): the limits themselves pass, one step beyond is refused with a
// message naming the field, the range and the value.
func TestCheckFieldsBounds(t *testing.T) {
	num := func(v float64) *float64 { return &v }
	dur := func(d time.Duration) caddy.Duration { return caddy.Duration(d) }
	for _, tc := range []struct {
		name string
		c    Config
		want string // "": accepted
	}{
		{"renew_threshold_days 0", Config{RenewThresholdDays: num(0)}, ""},
		{"renew_threshold_days 3650", Config{RenewThresholdDays: num(3650)}, ""},
		{"renew_threshold_days 3650.5", Config{RenewThresholdDays: num(3650.5)}, "renew_threshold_days: must be at most 3650 (10 years), got 3650.5"},
		{"renew_threshold_days 1e9", Config{RenewThresholdDays: num(1e9)}, "renew_threshold_days: must be at most 3650 (10 years), got 1e+09"},
		{"renew_threshold_days +Inf", Config{RenewThresholdDays: num(math.Inf(1))}, "renew_threshold_days: expected a number of 0 or more, got +Inf"},
		{"fail_backoff_minutes 0", Config{FailBackoffMinutes: num(0)}, ""},
		{"fail_backoff_minutes 525600", Config{FailBackoffMinutes: num(525600)}, ""},
		{"fail_backoff_minutes 525601", Config{FailBackoffMinutes: num(525601)}, "fail_backoff_minutes: must be at most 525600 (a year), got 525601"},
		{"fail_backoff_minutes 1e9", Config{FailBackoffMinutes: num(1e9)}, "fail_backoff_minutes: must be at most 525600 (a year), got 1e+09"},
		{"fail_backoff_minutes negative", Config{FailBackoffMinutes: num(-5)}, "fail_backoff_minutes: must not be negative (0 disables the backoff), got -5"},

		{"issue_timeout 10s", Config{IssueTimeout: dur(10 * time.Second)}, ""},
		{"issue_timeout 24h", Config{IssueTimeout: dur(24 * time.Hour)}, ""},
		{"issue_timeout 1ns", Config{IssueTimeout: 1}, "issue_timeout: must be between 10s and 24h, or 0 for the default (90s), got 1ns"},
		{"issue_timeout 9.999s", Config{IssueTimeout: dur(10*time.Second - time.Millisecond)}, "issue_timeout: must be between 10s and 24h, or 0 for the default (90s), got 9.999s"},
		{"issue_timeout 24h1s", Config{IssueTimeout: dur(24*time.Hour + time.Second)}, "issue_timeout: must be between 10s and 24h, or 0 for the default (90s), got 24h0m1s"},
		{"issue_timeout negative", Config{IssueTimeout: dur(-time.Second)}, "issue_timeout: must not be negative, got -1s"},

		{"cache_sync_interval 500ms", Config{CacheSyncInterval: dur(500 * time.Millisecond)}, ""},
		{"cache_sync_interval 24h", Config{CacheSyncInterval: dur(24 * time.Hour)}, ""},
		{"cache_sync_interval 1ns", Config{CacheSyncInterval: 1}, "cache_sync_interval: must be between 500ms and 24h, or 0 for the default (10s), got 1ns"},
		{"cache_sync_interval 499ms", Config{CacheSyncInterval: dur(499 * time.Millisecond)}, "cache_sync_interval: must be between 500ms and 24h, or 0 for the default (10s), got 499ms"},
		{"cache_sync_interval 25h", Config{CacheSyncInterval: dur(25 * time.Hour)}, "cache_sync_interval: must be between 500ms and 24h, or 0 for the default (10s), got 25h0m0s"},

		{"renew_interval 1m", Config{RenewInterval: dur(time.Minute)}, ""},
		{"renew_interval 8760h", Config{RenewInterval: dur(365 * 24 * time.Hour)}, ""},
		{"renew_interval 1ns", Config{RenewInterval: 1}, "renew_interval: must be between 1m and 8760h (365 days), or 0 for the default (24h), got 1ns"},
		{"renew_interval 59s", Config{RenewInterval: dur(59 * time.Second)}, "renew_interval: must be between 1m and 8760h (365 days), or 0 for the default (24h), got 59s"},
		{"renew_interval 8761h", Config{RenewInterval: dur(8761 * time.Hour)}, "renew_interval: must be between 1m and 8760h (365 days), or 0 for the default (24h), got 8761h0m0s"},

		{"renew_first_delay 1ns", Config{RenewFirstDelay: 1}, ""},
		{"renew_first_delay 8760h", Config{RenewFirstDelay: dur(365 * 24 * time.Hour)}, ""},
		{"renew_first_delay 8761h", Config{RenewFirstDelay: dur(8761 * time.Hour)}, "renew_first_delay: must be at most 8760h (365 days), or 0 for the default (1m), got 8761h0m0s"},
		{"renew_first_delay negative", Config{RenewFirstDelay: -1}, "renew_first_delay: must not be negative, got -1ns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.CheckFields()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("CheckFields: %v", err)
			case tc.want != "" && (err == nil || err.Error() != tc.want):
				t.Fatalf("CheckFields = %v, want %q", err, tc.want)
			}
			// Settings (what Provision runs) refuses with the same message
			tc.c.AccountEmail, tc.c.APIURI = "ops@example.com", "https://ca.example/dir"
			_, err = tc.c.Settings()
			if tc.want != "" && (err == nil || err.Error() != tc.want) {
				t.Fatalf("Settings = %v, want %q", err, tc.want)
			}
			if tc.want == "" && err != nil {
				t.Fatalf("Settings: %v", err)
			}
		})
	}
}

// TestSettingsAtLimits: at the upper limit of every field, the durations
// Settings makes are exact (no time.Duration overflow: renew_threshold_days
// 1e9 once gave a renewal date in 1734, fail_backoff_minutes 1e9 no
// backoff at all).
func TestSettingsAtLimits(t *testing.T) {
	days, minutes := float64(MaxRenewThresholdDays), float64(MaxFailBackoffMinutes)
	year := caddy.Duration(365 * 24 * time.Hour)
	c := Config{
		AccountEmail: "ops@example.com", APIURI: "https://ca.example/dir",
		RenewThresholdDays: &days, FailBackoffMinutes: &minutes,
		IssueTimeout: caddy.Duration(24 * time.Hour), CacheSyncInterval: caddy.Duration(24 * time.Hour),
		RenewInterval: year, RenewFirstDelay: year,
	}
	s, err := c.Settings()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct {
		name      string
		got, want time.Duration
	}{
		{"RenewThreshold", s.RenewThreshold, 3650 * 24 * time.Hour},
		{"FailBackoff", s.FailBackoff, 525600 * time.Minute},
		{"IssueTimeout", s.IssueTimeout, 24 * time.Hour},
		{"CacheSyncInterval", s.CacheSyncInterval, 24 * time.Hour},
		{"RenewInterval", s.RenewInterval, 365 * 24 * time.Hour},
		{"RenewFirstDelay", s.RenewFirstDelay, 365 * 24 * time.Hour},
	} {
		if d.got != d.want {
			t.Errorf("%s = %s, want %s", d.name, d.got, d.want)
		}
		// what the app derives from them (twice issue_timeout, a renew_interval
		// jittered by up to 10%) stays positive too
		if 2*d.got <= 0 || time.Duration(float64(d.got)*1.1) <= 0 {
			t.Errorf("%s = %s: a derived duration overflows", d.name, d.got)
		}
	}
}

// TestFallbackSettings: each fallback CA is checked as the top-level
// fields of the same names, its errors naming it (fallback[i].field), and
// its settings are its own.
func TestFallbackSettings(t *testing.T) {
	base := func(f ...FallbackCA) Config {
		return Config{AccountEmail: "ops@example.com", APIURI: "https://ca.example/dir", Fallback: f}
	}
	for _, tc := range []struct {
		f    []FallbackCA
		want string
	}{
		{[]FallbackCA{{}}, "fallback[0].api_uri: required"},
		{[]FallbackCA{{APIURI: "https://b.example/dir"}, {APIURI: "ftp://c.example"}}, `fallback[1].api_uri: invalid URL "ftp://c.example"`},
		{[]FallbackCA{{APIURI: "https://CA.example/dir/"}}, "fallback[0].api_uri: https://CA.example/dir is the same CA as api_uri"},
		{[]FallbackCA{{APIURI: "https://b.example/dir"}, {APIURI: "https://b.example/dir"}}, "fallback[1].api_uri: https://b.example/dir is the same CA as fallback[0].api_uri"},
		{[]FallbackCA{{APIURI: "https://acme-staging-v02.api.letsencrypt.org/directory"}}, "fallback[0].tos_accepted: terms of service must be accepted"},
		{[]FallbackCA{{APIURI: "https://b.example/dir", EABKID: "kid"}}, "fallback[0].eab_hmac_key: required when eab_kid is set"},
		{[]FallbackCA{{APIURI: "https://b.example/dir", EABHMACKey: "aGk"}}, "fallback[0].eab_kid: required when eab_hmac_key is set"},
		{[]FallbackCA{{APIURI: "https://b.example/dir", TrustedRoots: []string{"/nonexistent/root.pem"}}}, "fallback[0].trusted_roots: reading /nonexistent/root.pem"},
		{[]FallbackCA{{APIURI: "https://b.example/dir", Profile: "a b"}}, `fallback[0].profile: "a b" is not a profile name`},
	} {
		c := base(tc.f...)
		_, err := c.Settings()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("fallback %+v: %v, want %q", tc.f, err, tc.want)
		}
	}

	c := base(FallbackCA{APIURI: "https://b.example/", TOSAccepted: true, EABKID: "kid", EABHMACKey: "aGk=", PreferredChain: "Root B", Profile: "shortlived"})
	s, err := c.Settings()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Fallback) != 1 {
		t.Fatalf("fallback settings %+v", s.Fallback)
	}
	f := s.Fallback[0]
	if f.Directory != "https://b.example/directory" || f.EAB == nil || f.EAB.KeyID != "kid" || f.EAB.MACKey != "aGk" ||
		len(f.Chains.RootCommonName) != 1 || f.Chains.RootCommonName[0] != "Root B" || f.Profile != "shortlived" || f.Roots != nil {
		t.Fatalf("fallback settings %+v", f)
	}
	if s.EAB != nil || s.Profile != "" {
		t.Fatalf("the fallback's settings leaked into the primary's: %+v", s)
	}
}

// TestOrderableWithPrivateFallback: a name no public CA issues for may be
// ordered when a fallback CA is private (trusted_roots).
func TestOrderableWithPrivateFallback(t *testing.T) {
	public := Settings{}
	if err := public.Orderable("intranet.local"); err == nil {
		t.Fatal("a public CA may be asked for intranet.local")
	}
	withPrivate := Settings{Fallback: []CA{{Roots: x509.NewCertPool()}}}
	if err := withPrivate.Orderable("intranet.local"); err != nil {
		t.Fatalf("with a private fallback CA: %v", err)
	}
}
