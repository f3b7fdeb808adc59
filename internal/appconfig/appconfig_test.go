package appconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
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
