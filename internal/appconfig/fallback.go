package appconfig

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/directory"
	"github.com/acmekit/caddy-acme/internal/placeholder"
)

// FallbackCA is a further CA (the `fallback` list), asked for a
// certificate when the CAs before it refused the name or could not be
// reached. Its fields mean what the top-level fields of the same names
// mean for the primary CA, and are checked the same way.
type FallbackCA struct {
	// The CA's ACME directory URL. Required.
	APIURI string `json:"api_uri"`
	// Whether you accept the CA's terms of service (required for Let's
	// Encrypt).
	TOSAccepted bool `json:"tos_accepted,omitempty"`
	// The External Account Binding, for CAs that require one (ZeroSSL,
	// Google); eab_hmac_key is a secret: use a placeholder.
	EABKID     string `json:"eab_kid,omitempty"`
	EABHMACKey string `json:"eab_hmac_key,omitempty"`
	// PEM files with the roots of a private CA's ACME server.
	TrustedRoots []string `json:"trusted_roots,omitempty"`
	// The root common name to prefer among the CA's alternate chains.
	PreferredChain string `json:"preferred_chain,omitempty"`
	// The ACME profile to order with at this CA.
	Profile string `json:"profile,omitempty"`
}

// CA is one CA's settings: the primary's (Settings' own fields) or a
// fallback's.
type CA struct {
	Directory string
	EAB       *acme.EAB // nil: no external account binding
	Roots     *x509.CertPool
	Chains    certmagic.ChainPreference
	Profile   string
}

// primaryCA is the primary CA's fields, as a fallback's.
func (c *Config) primaryCA() FallbackCA {
	return FallbackCA{
		APIURI:         c.APIURI,
		TOSAccepted:    c.TOSAccepted,
		EABKID:         c.EABKID,
		EABHMACKey:     c.EABHMACKey,
		TrustedRoots:   c.TrustedRoots,
		PreferredChain: c.PreferredChain,
		Profile:        c.Profile,
	}
}

// checkFallback checks what CheckFields can of the fallback CAs: each has
// a valid api_uri and profile, and no two CAs (the primary included, whose
// directory is primary) are the same.
func (c *Config) checkFallback(primary string) error {
	seen := map[string]string{issuerKey(primary): "api_uri"}
	for i, f := range c.Fallback {
		prefix := fmt.Sprintf("fallback[%d].", i)
		if f.APIURI == "" {
			return fmt.Errorf("%sapi_uri: required: the ACME directory URL of the fallback CA", prefix)
		}
		dir, err := directory.URL(f.APIURI)
		if err != nil {
			return errors.New(prefix + err.Error())
		}
		key := issuerKey(dir)
		if other, dup := seen[key]; dup {
			return fmt.Errorf("%sapi_uri: %s is the same CA as %s: each CA may be listed once", prefix, dir, other)
		}
		seen[key] = prefix + "api_uri"
		if err := checkProfile(prefix, f.Profile); err != nil {
			return err
		}
	}
	return nil
}

// fallbackSettings returns the settings of the fallback CAs (checked by
// checkFallback).
func (c *Config) fallbackSettings() ([]CA, error) {
	var cas []CA
	for i, f := range c.Fallback {
		dir, err := directory.URL(f.APIURI)
		if err != nil {
			return nil, err
		}
		ca, err := f.settings(fmt.Sprintf("fallback[%d].", i), dir)
		if err != nil {
			return nil, err
		}
		cas = append(cas, ca)
	}
	return cas, nil
}

// settings checks f (the CA whose directory URL is dir), expands its
// placeholders and reads its trusted roots. Errors name the field with
// prefix ("" for the primary CA, "fallback[i]." for a fallback CA).
func (f FallbackCA) settings(prefix, dir string) (CA, error) {
	ca := CA{Directory: dir, Profile: f.Profile}
	if IsLetsEncrypt(dir) && !f.TOSAccepted {
		return ca, fmt.Errorf("%stos_accepted: terms of service must be accepted, see https://letsencrypt.org/repository/ (set tos_accepted to true to use %s)", prefix, dir)
	}
	kid, err := placeholder.Expand(prefix+"eab_kid", f.EABKID)
	if err != nil {
		return ca, err
	}
	hmacKey, err := placeholder.ExpandSecret(prefix+"eab_hmac_key", f.EABHMACKey)
	if err != nil {
		return ca, err
	}
	switch {
	case kid == "" && hmacKey == "":
	case kid == "":
		return ca, fmt.Errorf("%seab_kid: required when eab_hmac_key is set: give both values of the CA's external account binding", prefix)
	case hmacKey == "":
		return ca, fmt.Errorf("%seab_hmac_key: required when eab_kid is set: give both values of the CA's external account binding", prefix)
	default:
		if _, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(hmacKey, "=")); err != nil {
			return ca, fmt.Errorf("%seab_hmac_key: not base64url: give the HMAC key exactly as the CA shows it (value redacted)", prefix)
		}
		ca.EAB = &acme.EAB{KeyID: kid, MACKey: strings.TrimRight(hmacKey, "=")}
	}
	if f.PreferredChain != "" {
		ca.Chains = certmagic.ChainPreference{RootCommonName: []string{f.PreferredChain}}
	}
	if len(f.TrustedRoots) > 0 {
		ca.Roots = x509.NewCertPool()
		for _, file := range f.TrustedRoots {
			pemBytes, err := os.ReadFile(file)
			if err != nil {
				return ca, fmt.Errorf("%strusted_roots: reading %s: %w", prefix, file, err)
			}
			if !ca.Roots.AppendCertsFromPEM(pemBytes) {
				return ca, fmt.Errorf("%strusted_roots: %s holds no PEM certificate", prefix, file)
			}
		}
	}
	return ca, nil
}

// NewFallbackIssuers returns the issuers of s's fallback CAs over magic,
// in order: each as NewIssuer's, with the CA's own directory, account
// binding, roots, chain preference and profile. account_key is the
// primary CA's account: each fallback CA gets an account with a key
// certmagic generates and keeps in storage.
func NewFallbackIssuers(magic *certmagic.Config, s Settings, logger *zap.Logger) []*certmagic.ACMEIssuer {
	out := make([]*certmagic.ACMEIssuer, 0, len(s.Fallback))
	for _, ca := range s.Fallback {
		fs := s
		fs.Directory, fs.EAB, fs.Roots, fs.Chains, fs.Profile = ca.Directory, ca.EAB, ca.Roots, ca.Chains, ca.Profile
		fs.AccountKey = ""
		out = append(out, NewIssuer(magic, fs, logger.With(zap.String("ca", ca.Directory))))
	}
	return out
}

// issuerKey is the storage form of certmagic's issuer key of the CA at
// directory URL dir, under which its account and certificates are kept:
// two URLs with the same one are the same CA to the storage.
func issuerKey(dir string) string {
	return certmagic.StorageKeys.Safe((&certmagic.ACMEIssuer{CA: dir}).IssuerKey())
}
