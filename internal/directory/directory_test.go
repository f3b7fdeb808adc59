package directory

import (
	"testing"

	"github.com/caddyserver/certmagic"
)

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"": Default,
		// a bare origin: Kong's /directory appended
		"https://acme-v02.api.letsencrypt.org":   "https://acme-v02.api.letsencrypt.org/directory",
		"https://acme-v02.api.letsencrypt.org/":  "https://acme-v02.api.letsencrypt.org/directory",
		"https://acme-v02.api.letsencrypt.org//": "https://acme-v02.api.letsencrypt.org/directory",
		"https://127.0.0.1:8443":                 "https://127.0.0.1:8443/directory",
		"http://127.0.0.1:8443/":                 "http://127.0.0.1:8443/directory",
		// a path: as given, less trailing slashes
		"https://127.0.0.1:14000/dir":              "https://127.0.0.1:14000/dir",
		"https://127.0.0.1:14000/dir/":             "https://127.0.0.1:14000/dir",
		"https://acme.zerossl.com/v2/DV90":         "https://acme.zerossl.com/v2/DV90",
		"https://acme.zerossl.com/v2/DV90/":        "https://acme.zerossl.com/v2/DV90",
		"https://ca.example/acme/acme/directory":   "https://ca.example/acme/acme/directory",
		"https://ca.example/acme/acme/directory/":  "https://ca.example/acme/acme/directory",
		"https://ca.example/acme/a%2Fb/directory/": "https://ca.example/acme/a%2Fb/directory",
		"https://ca.example/dir?x=1":               "https://ca.example/dir?x=1",
	} {
		got, err := URL(in)
		if err != nil || got != want {
			t.Errorf("URL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"ftp://ca.example/dir", "ca.example/dir", "https://", "://x", "https:///dir"} {
		if got, err := URL(in); err == nil {
			t.Errorf("URL(%q) = %q, want an error", in, got)
		}
	}
}

// TestURLIssuerKey: the spellings URL makes one are one to certmagic's
// issuer key, the storage key of the account and the certificates.
func TestURLIssuerKey(t *testing.T) {
	for _, group := range [][]string{
		{"https://127.0.0.1:14000/dir", "https://127.0.0.1:14000/dir/"},
		{"https://acme-v02.api.letsencrypt.org", "https://acme-v02.api.letsencrypt.org/", "https://acme-v02.api.letsencrypt.org/directory", "https://acme-v02.api.letsencrypt.org/directory/"},
	} {
		var dirs, keys []string
		for _, in := range group {
			dir, err := URL(in)
			if err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, dir)
			keys = append(keys, (&certmagic.ACMEIssuer{CA: dir}).IssuerKey())
		}
		for i := range group {
			if dirs[i] != dirs[0] || keys[i] != keys[0] {
				t.Errorf("%q: directory %q, issuer key %q; %q: %q, %q; want one", group[0], dirs[0], keys[0], group[i], dirs[i], keys[i])
			}
		}
	}
}
