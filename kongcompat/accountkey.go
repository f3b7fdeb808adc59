package kongcompat

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"

	"github.com/acmekit/caddy-acme/internal/appconfig"
)

// accountKey maps config.account_key, a reference to a Kong keys entity
// ({key_id, key_set}), to the PEM account key of the app when the file
// holds that entity. Kong uses the key only to register a new account, as
// caddy-acme does; when the key is not in the file, the app generates
// one (unless the account is migrated from Kong's storage), which a
// warning says.
func (c *converter) accountKey(cfg *value, a *appconfig.Config) error {
	ref := cfg.get("account_key")
	if ref == nil {
		return nil
	}
	const path = "config.account_key"
	keyID, keySet := ref.get("key_id").text(), ref.get("key_set").text()
	desc := "key " + keyID
	if keySet != "" {
		desc += " of key set " + keySet
	}
	key := c.inv.findKey(keyID, keySet)
	if key != nil {
		c.inv.use("keys")
		if keySet != "" {
			c.inv.use("key_sets")
		}
	}
	if key == nil {
		c.warn(ref.line, path, "%s is a Kong keys entity that is not in this file: the adapted config has no account_key, so a new account key is generated unless the account is migrated from Kong's storage; to keep Kong's key, set the app's account_key to its PEM (e.g. {file./etc/caddy/account.key})", desc)
		return nil
	}
	if p := key.get("pem").get("private_key"); p != nil && p.kind == kString {
		v, err := c.res.value(&field{typ: tString, secret: true, referenceable: true}, p, path)
		if err != nil {
			return c.errorf(p.line, "%s: %v", c.subject(), err)
		}
		if !v.dyn {
			if block, _ := pem.Decode([]byte(v.str)); block == nil {
				return c.errorf(p.line, "%s: %s: %s: pem.private_key is not PEM (value redacted)", c.subject(), path, desc)
			}
		}
		a.AccountKey = caddyString(v)
		return nil
	}
	if j := key.get("jwk"); j != nil && j.kind == kString {
		pemKey, err := jwkToPEM(j.str)
		if err != nil {
			return c.errorf(j.line, "%s: %s: %s: jwk: %v (value redacted)", c.subject(), path, desc, err)
		}
		a.AccountKey = escapeBraces(pemKey)
		return nil
	}
	c.warn(key.line, path, "%s has no private key (pem.private_key or a private jwk): the adapted config has no account_key", desc)
	return nil
}

// jwkToPEM converts a private RSA or EC JSON Web Key to a PKCS #8 PEM key.
func jwkToPEM(raw string) (string, error) {
	var k struct {
		Kty, Crv      string
		N, E, D, P, Q string
	}
	if err := json.Unmarshal([]byte(raw), &k); err != nil {
		return "", errors.New("not a JSON Web Key")
	}
	num := func(s string) (*big.Int, error) {
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
		if err != nil || len(b) == 0 {
			return nil, errors.New("a key parameter is missing or not base64url")
		}
		return new(big.Int).SetBytes(b), nil
	}
	var priv any
	switch k.Kty {
	case "RSA":
		var vals [5]*big.Int
		for i, s := range []string{k.N, k.E, k.D, k.P, k.Q} {
			n, err := num(s)
			if err != nil {
				return "", errors.New("not a private RSA key (n, e, d, p and q are needed)")
			}
			vals[i] = n
		}
		if !vals[1].IsInt64() || vals[1].Int64() > 1<<31-1 {
			return "", errors.New("invalid RSA exponent")
		}
		key := &rsa.PrivateKey{
			PublicKey: rsa.PublicKey{N: vals[0], E: int(vals[1].Int64())},
			D:         vals[2],
			Primes:    []*big.Int{vals[3], vals[4]},
		}
		if err := key.Validate(); err != nil {
			return "", errors.New("invalid RSA key")
		}
		key.Precompute()
		priv = key
	case "EC":
		curve := map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()}[k.Crv]
		if curve == nil {
			return "", errors.New("unsupported curve")
		}
		d, err := num(k.D)
		if err != nil {
			return "", errors.New("not a private EC key (d is needed)")
		}
		key, err := ecdsaFromD(curve, d)
		if err != nil {
			return "", err
		}
		priv = key
	default:
		return "", errors.New("only RSA and EC keys can be ACME account keys")
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", errors.New("cannot encode the key")
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}

// ecdsaFromD builds an EC private key from its scalar, deriving the
// public point.
func ecdsaFromD(curve elliptic.Curve, d *big.Int) (*ecdsa.PrivateKey, error) {
	size := (curve.Params().BitSize + 7) / 8
	if d.Sign() <= 0 || d.Cmp(curve.Params().N) >= 0 {
		return nil, errors.New("invalid EC key")
	}
	b := d.FillBytes(make([]byte, size))
	key, err := ecdsa.ParseRawPrivateKey(curve, b)
	if err != nil {
		return nil, errors.New("invalid EC key")
	}
	return key, nil
}
