package caddyacme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/internal/appconfig"
)

// BenchmarkCertificateCached measures the handshake path of the manager for
// a name whose certificate is in memory: the allowlist check plus the cache
// lookup, with 10 and 100 000 domains. "certmagic_cache_lookup" is the raw
// certmagic cache lookup alone, the floor, measured in the same run.
func BenchmarkCertificateCached(b *testing.B) {
	const name = "www.tenant.example.com"
	for _, n := range []int{10, 100000} {
		app := benchApp(b, n, name)
		hello := &tls.ClientHelloInfo{ServerName: name}
		b.Run(fmt.Sprintf("domains=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := app.rt.Certificate(b.Context(), hello); err != nil {
					b.Fatal(err)
				}
			}
		})
		if n == 10 {
			b.Run("certmagic_cache_lookup", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if len(app.cache.AllMatchingCertificates(name)) == 0 {
						b.Fatal("not cached")
					}
				}
			})
		}
	}
}

// BenchmarkCertificateRefused measures refusing a name that is not allowed.
func BenchmarkCertificateRefused(b *testing.B) {
	for _, n := range []int{10, 100000} {
		app := benchApp(b, n, "www.tenant.example.com")
		hello := &tls.ClientHelloInfo{ServerName: "www.attacker.example.net"}
		b.Run(fmt.Sprintf("domains=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := app.rt.Certificate(b.Context(), hello); err == nil {
					b.Fatal("allowed")
				}
			}
		})
	}
}

// benchApp provisions an app with n domains (one of them *.tenant.example.com)
// and a self-signed certificate for name in its cache.
func benchApp(b *testing.B, n int, name string) *App {
	b.Helper()
	domains := make([]string, 0, n)
	for i := range n - 1 {
		domains = append(domains, fmt.Sprintf("host%d.example.org", i))
	}
	domains = append(domains, "*.tenant.example.com")
	app := provisionByHand(b, &App{Config: appconfig.Config{Domains: domains}})

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := app.magic.CacheUnmanagedTLSCertificate(b.Context(), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil); err != nil {
		b.Fatal(err)
	}
	return app
}
