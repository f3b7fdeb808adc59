package appconfig

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

// PrepareAccount makes sure the CA knows the account of s.AccountKey
// (account_key), and that iss's storage holds it, before iss orders with
// it. certmagic only looks such an account up at the CA (it never
// registers a configured key), so a key the CA has never seen would fail
// every order: PrepareAccount registers it then, with s's email as the
// contact, the terms of service agreed (see Config.TOSAccepted) and s's
// external account binding if any. It does nothing without account_key.
//
// Errors name account_key; neither the key nor the EAB HMAC key ever
// appears in them.
func PrepareAccount(ctx context.Context, iss *certmagic.ACMEIssuer, s *Settings) error {
	if s.AccountKey == "" {
		return nil
	}
	_, err := iss.GetAccount(ctx, []byte(s.AccountKey))
	if err == nil {
		return nil
	}
	// certmagic wraps the CA's problem with %v: only its text is left
	if !strings.Contains(err.Error(), acme.ProblemTypeAccountDoesNotExist) {
		return fmt.Errorf("account_key: looking up the account at %s: %w", s.Directory, err)
	}
	if err := registerAccount(ctx, s); err != nil {
		return err
	}
	if _, err := iss.GetAccount(ctx, []byte(s.AccountKey)); err != nil {
		return fmt.Errorf("account_key: loading the account just registered at %s: %w", s.Directory, err)
	}
	return nil
}

// registerAccount registers the account of s.AccountKey with the CA (a
// key the CA already knows gets its existing account back, RFC 8555
// section 7.3.1).
func registerAccount(ctx context.Context, s *Settings) error {
	key, err := certmagic.PEMDecodePrivateKey([]byte(s.AccountKey))
	if err != nil {
		// the key's text stays out of the error (Settings checked it already)
		return errors.New("account_key: not a PEM-encoded private key (value redacted)")
	}
	client := acmez.Client{Client: &acme.Client{
		Directory:  s.Directory,
		HTTPClient: accountHTTPClient(s),
		UserAgent:  "caddy-acme",
	}}
	account := acme.Account{
		Contact:              []string{"mailto:" + s.Email},
		TermsOfServiceAgreed: true, // see Config.TOSAccepted
		PrivateKey:           key,
	}
	binding := ""
	if s.EAB != nil {
		if err := account.SetExternalAccountBinding(ctx, client.Client, *s.EAB); err != nil {
			return fmt.Errorf("account_key: binding the new account to eab_kid %s: %w", s.EAB.KeyID, err)
		}
		binding = " bound to eab_kid " + s.EAB.KeyID
	}
	if _, err := client.NewAccount(ctx, account); err != nil {
		return fmt.Errorf("account_key: registering the account%s with %s: %w", binding, s.Directory, err)
	}
	return nil
}

// accountHTTPClient is the HTTP client of the registration: trusting
// s.Roots (trusted_roots) if set, as the issuer's own client does.
func accountHTTPClient(s *Settings) *http.Client {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if s.Roots != nil {
		transport.TLSClientConfig = &tls.Config{RootCAs: s.Roots, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: transport, Timeout: 2 * time.Minute}
}
