package issuance

import (
	"testing"

	"github.com/caddyserver/certmagic"
)

// TestSite: the keys Site derives are certmagic's own, also for names
// certmagic's Safe rewrites, and for the issuer keys of odd CA URLs.
func TestSite(t *testing.T) {
	issuers := []string{
		(&certmagic.ACMEIssuer{CA: "https://127.0.0.1:14000/dir"}).IssuerKey(),
		(&certmagic.ACMEIssuer{CA: "https://acme-v02.api.letsencrypt.org/directory"}).IssuerKey(),
		(&certmagic.ACMEIssuer{CA: "https://ca.example/acme/acme/directory"}).IssuerKey(),
		"", "acme-v02.api.letsencrypt.org-directory", "127.0.0.1:14000-dir", "ca.example.com-acme-dir",
	}
	names := []string{
		"example.com", "EXAMPLE.com", "*.example.com", "xn--bcher-kva.example", "a_b.example.com",
		"127.0.0.1", "::1", "a+b.example.com", "with space", "..", "a..b", "", "x.crt", "ünï.example", "UPPER.example.com", "a.crt", "we ird/name.crt",
	}
	for _, ik := range issuers {
		for _, name := range names {
			got := Site(ik, name)
			want := SiteKeys{
				Cert: certmagic.StorageKeys.SiteCert(ik, name),
				Key:  certmagic.StorageKeys.SitePrivateKey(ik, name),
				Meta: certmagic.StorageKeys.SiteMeta(ik, name),
				Dir:  certmagic.StorageKeys.CertsSitePrefix(ik, name),
			}
			if got != want {
				t.Errorf("Site(%q, %q) = %+v, certmagic: %+v", ik, name, got, want)
			}
		}
	}
}
