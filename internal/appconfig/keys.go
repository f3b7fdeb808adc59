package appconfig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"

	"github.com/caddyserver/certmagic"
)

// keyGenerator makes certificate keys as Kong's cert_type and rsa_key_size
// say: RSA of 2048, 3072 or 4096 bits, or ECDSA P-256. (certmagic's
// StandardKeyGenerator has no RSA 3072.)
type keyGenerator struct {
	ecc     bool
	rsaBits int
}

// GenerateKey returns a new private key.
func (k keyGenerator) GenerateKey() (crypto.PrivateKey, error) {
	if k.ecc {
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	return rsa.GenerateKey(rand.Reader, k.rsaBits)
}

// Interface guards
var _ certmagic.KeyGenerator = keyGenerator{}
