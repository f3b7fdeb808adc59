package caddyacme

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// accountKeyFile writes a new account key to a file and returns its PEM
// and the file's path.
func accountKeyFile(t *testing.T) (keyPEM, file string) {
	t.Helper()
	keyPEM = testenv.NewAccountKeyPEM(t)
	file = filepath.Join(t.TempDir(), "account.key")
	if err := os.WriteFile(file, []byte(keyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	return keyPEM, file
}

// caAccount returns the account the rig's Pebble knows for keyPEM (an
// error if none).
func (r *rig) caAccount(keyPEM string) (acme.Account, error) {
	r.t.Helper()
	key, err := certmagic.PEMDecodePrivateKey([]byte(keyPEM))
	if err != nil {
		r.t.Fatal(err)
	}
	client := &acme.Client{Directory: r.pebble.DirectoryURL, HTTPClient: r.pebble.Client()}
	return client.GetAccount(r.t.Context(), acme.Account{PrivateKey: key})
}

// checkOrderedWith checks that every order Pebble received was placed by
// the account of keyPEM, and that certmagic stored exactly that key as
// the account's.
func (r *rig) checkOrderedWith(keyPEM string, wantOrders int) {
	r.t.Helper()
	acct, err := r.caAccount(keyPEM)
	if err != nil {
		r.t.Fatalf("the CA does not know account_key: %v", err)
	}
	orders := r.pebble.OrderList()
	if len(orders) != wantOrders {
		r.t.Fatalf("%d orders, want %d", len(orders), wantOrders)
	}
	for _, o := range orders {
		if o.Account != acct.Location {
			r.t.Fatalf("order %s placed by account %s, want account_key's %s", o.ID, o.Account, acct.Location)
		}
	}
	if got := testenv.StoredAccountKeys(r.t, r.storage); len(got) != 1 || got[0] != strings.TrimSpace(keyPEM) {
		r.t.Fatalf("certmagic stored %d account keys, want exactly account_key", len(got))
	}
}

// TestAccountKeyNewAccount: an account_key the CA has never seen is
// registered on the first order (with the external account binding when
// the CA requires one), and the certificate is obtained on the first
// handshake with that account. Neither the key nor the HMAC key reaches
// the logs.
func TestAccountKeyNewAccount(t *testing.T) {
	hmacKey := base64.RawURLEncoding.EncodeToString([]byte("caddy-acme test EAB HMAC key 256"))
	for _, tc := range []struct {
		name  string
		eab   bool
		names []string // handshaken at once
	}{
		{"without EAB", false, []string{"a.acct.example.com", "b.acct.example.com", "c.acct.example.com"}},
		{"with EAB", true, []string{"eab.acct.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testenv.PebbleOptions{}
			if tc.eab {
				opts.EAB = map[string]string{"kid-1": hmacKey}
			}
			r := newRig(t, opts)
			r.logFile = filepath.Join(t.TempDir(), "caddy.log")
			keyPEM, keyFile := accountKeyFile(t)
			if _, err := r.caAccount(keyPEM); err == nil {
				t.Fatal("the CA knows a key just generated")
			}
			fields := map[string]any{"domains": []string{"*.acct.example.com"}, "account_key": "{file." + keyFile + "}"}
			if tc.eab {
				t.Setenv("CADDY_ACME_TEST_EAB_HMAC", hmacKey)
				fields["eab_kid"] = "kid-1"
				fields["eab_hmac_key"] = "{env.CADDY_ACME_TEST_EAB_HMAC}"
			}
			r.load(r.config(r.acme(fields), nil))

			var wg sync.WaitGroup
			for _, name := range tc.names {
				wg.Go(func() {
					if _, err := r.handshake(name); err != nil {
						t.Errorf("TLS handshake for %s: %v", name, err)
					}
				})
			}
			wg.Wait()
			if t.Failed() {
				t.Fatalf("pebble log:\n%s", r.pebble.Log())
			}
			r.checkOrderedWith(keyPEM, len(tc.names))

			if err := caddy.Stop(); err != nil {
				t.Fatal(err)
			}
			logs, err := os.ReadFile(r.logFile)
			if err != nil {
				t.Fatal(err)
			}
			keyBody := strings.Split(keyPEM, "\n")[1]
			if strings.Contains(string(logs), keyBody) || strings.Contains(string(logs), hmacKey) {
				t.Fatal("a secret appears in the logs")
			}
		})
	}
}

// TestAccountKeyRegistered: an account_key the CA already knows is used
// as before, by a node whose storage has never seen it.
func TestAccountKeyRegistered(t *testing.T) {
	r := newRig(t, testenv.PebbleOptions{})
	keyPEM, keyFile := accountKeyFile(t)
	key, err := certmagic.PEMDecodePrivateKey([]byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	client := &acme.Client{Directory: r.pebble.DirectoryURL, HTTPClient: r.pebble.Client()}
	if _, err := client.NewAccount(t.Context(), acme.Account{
		Contact:              []string{"mailto:elsewhere@example.com"},
		TermsOfServiceAgreed: true,
		PrivateKey:           key,
	}); err != nil {
		t.Fatalf("registering the key beforehand: %v", err)
	}
	before, err := r.caAccount(keyPEM)
	if err != nil {
		t.Fatal(err)
	}

	r.load(r.config(r.acme(map[string]any{"domains": []string{"known.example.com"}, "account_key": "{file." + keyFile + "}"}), nil))
	r.mustHandshake("known.example.com")
	r.checkOrderedWith(keyPEM, 1)
	if after, err := r.caAccount(keyPEM); err != nil || after.Location != before.Location {
		t.Fatalf("account %s after, %s before (%v)", after.Location, before.Location, err)
	}
}
