package vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/vault/api"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// newStorage provisions a storage with the root token of v (unless
// configure changes that) and a 2s lock lease, and cleans it up with the
// test.
func newStorage(t testing.TB, v *testenv.Vault, configure func(*Storage)) *Storage {
	t.Helper()
	s := &Storage{
		Address:    v.Addr,
		Token:      v.RootToken,
		PathPrefix: "test/" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")),
		Options:    backend.Options{LockLease: caddy.Duration(2 * time.Second)},
	}
	if configure != nil {
		configure(s)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := s.Provision(ctx); err != nil {
		cancel()
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Cleanup(); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
		cancel()
	})
	return s
}

// rootClient is a Vault API client with the root token.
func rootClient(t testing.TB, v *testenv.Vault) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: v.Addr, HttpClient: v.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(v.RootToken)
	return c
}

func write(t testing.TB, c *api.Client, path string, data map[string]any) *api.Secret {
	t.Helper()
	s, err := c.Logical().WriteWithContext(context.Background(), path, data)
	if err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
	return s
}

// addPolicy creates the policy "caddy": everything the storage needs on the
// secret/ mount, nothing else.
func addPolicy(t testing.TB, root *api.Client) {
	t.Helper()
	write(t, root, "sys/policies/acl/caddy", map[string]any{
		"policy": `path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }`,
	})
}

// roundTrip stores and loads a value through s.
func roundTrip(t testing.TB, s *Storage, key string) {
	t.Helper()
	ctx := context.Background()
	want := []byte("value of " + key)
	if err := s.Store(ctx, key, want); err != nil {
		t.Fatalf("Store: %v", err)
	}
	got, err := s.Load(ctx, key)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Load = %q, want %q", got, want)
	}
}

func crash(s certmagic.Storage) { s.(*Storage).abandon() }

func TestConformance(t *testing.T) {
	t.Parallel()
	v := testenv.StartVault(t, testenv.VaultOptions{})
	storagetest.Run(t, func(t testing.TB, namespace string) certmagic.Storage {
		return newStorage(t, v, func(s *Storage) { s.PathPrefix = "conformance/" + namespace })
	}, storagetest.Options{Lease: 2 * time.Second, Crash: crash})
}

func TestConformanceEncrypted(t *testing.T) {
	t.Parallel()
	v := testenv.StartVault(t, testenv.VaultOptions{})
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	storagetest.Run(t, func(t testing.TB, namespace string) certmagic.Storage {
		return newStorage(t, v, func(s *Storage) {
			s.PathPrefix = "encrypted/" + namespace
			s.EncryptionKey = key
		})
	}, storagetest.Options{Lease: 2 * time.Second, Crash: crash})
}

// TestLayout checks where and how values and locks land in Vault: what
// operators, policies and migrations from Kong see.
func TestLayout(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root := rootClient(t, v)
	s := newStorage(t, v, func(s *Storage) { s.PathPrefix = "kong/acme" })
	ctx := context.Background()

	text := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	if err := s.Store(ctx, "certificates/ca/example.com/example.com.crt", text); err != nil {
		t.Fatal(err)
	}
	sec, err := root.KVv2("secret").Get(ctx, "kong/acme/certificates/ca/example.com/example.com.crt")
	if err != nil {
		t.Fatal(err)
	}
	if sec.Data["value"] != string(text) || sec.Data["encoding"] != nil {
		t.Fatalf("a PEM value is stored as %v, want the text itself", sec.Data)
	}
	info, err := s.Stat(ctx, "certificates/ca/example.com/example.com.crt")
	if err != nil {
		t.Fatal(err)
	}
	if !info.Modified.Equal(sec.VersionMetadata.CreatedTime) {
		t.Fatalf("Stat.Modified = %s, want the version's created_time %s", info.Modified, sec.VersionMetadata.CreatedTime)
	}

	binary := []byte{0xff, 0x00, 0xfe}
	if err := s.Store(ctx, "/bin/", binary); err != nil {
		t.Fatal(err)
	}
	sec, err = root.KVv2("secret").Get(ctx, "kong/acme/bin")
	if err != nil {
		t.Fatal(err)
	}
	if sec.Data["value"] != base64.StdEncoding.EncodeToString(binary) || sec.Data["encoding"] != "base64" {
		t.Fatalf("a binary value is stored as %v, want base64 with encoding base64", sec.Data)
	}

	// a lock lives beside the keys, with Vault-side expiry after the lease
	if err := s.Lock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	meta, err := root.KVv2("secret").GetMetadata(ctx, "kong/acme-locks/issue_cert_example.com")
	if err != nil {
		t.Fatal(err)
	}
	if meta.DeleteVersionAfter != 2*time.Second {
		t.Fatalf("lock metadata delete_version_after = %s, want the 2s lease", meta.DeleteVersionAfter)
	}
	lock, err := root.KVv2("secret").Get(ctx, "kong/acme-locks/issue_cert_example.com")
	if err != nil {
		t.Fatal(err)
	}
	if tok, _ := lock.Data["token"].(string); len(tok) != 32 {
		t.Fatalf("lock data = %v, want a 128-bit token", lock.Data)
	}
	keys, err := s.List(ctx, "", true)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	want := []string{"bin", "certificates", "certificates/ca", "certificates/ca/example.com", "certificates/ca/example.com/example.com.crt"}
	if !slices.Equal(keys, want) {
		t.Fatalf("List(\"\", true) = %q, want %q (no locks)", keys, want)
	}
	if err := s.Unlock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	lock, err = root.KVv2("secret").Get(ctx, "kong/acme-locks/issue_cert_example.com")
	if err != nil {
		t.Fatal(err)
	}
	if lock.Data["token"] != "" {
		t.Fatalf("lock data after Unlock = %v, want no token", lock.Data)
	}
}

// TestSoftDeleted: a key whose current version was deleted (not destroyed)
// in Vault is missing, and Store brings it back.
func TestSoftDeleted(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root := rootClient(t, v)
	s := newStorage(t, v, nil)
	ctx := context.Background()
	roundTrip(t, s, "a/b")
	if err := root.KVv2("secret").Delete(ctx, s.prefix+"/a/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "a/b"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a soft-deleted key: %v, want fs.ErrNotExist", err)
	}
	if _, err := s.Stat(ctx, "a/b"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat of a soft-deleted key: %v, want fs.ErrNotExist", err)
	}
	if s.Exists(ctx, "a/b") {
		t.Fatal("a soft-deleted key exists")
	}
	roundTrip(t, s, "a/b")
}

// TestValueAndFolder: in Vault a path can be a secret and a folder at once
// (Store refuses to make one, as Caddy's file storage does, but Kong or an
// earlier caddy-acme may have); List shows it once, Stat calls it a value,
// Delete removes both.
func TestValueAndFolder(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	s := newStorage(t, v, nil)
	ctx := context.Background()
	for _, k := range []string{"a/b", "a/c/d"} {
		if err := s.Store(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Store(ctx, "a", []byte("a")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Store(a) over the folder a: %v, want fs.ErrExist", err)
	}
	// written as Store would, without its check
	body, err := json.Marshal(writeRequest{Data: encodeValue(s.rt.Sealer.Seal("a", []byte("a")))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.client.call(ctx, http.MethodPut, s.dataPath("a"), nil, body, &writeResponse{}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(ctx, "a"); err != nil || string(got) != "a" {
		t.Fatalf("Load(a) = %q, %v", got, err)
	}
	list := func(prefix string, recursive bool) []string {
		t.Helper()
		keys, err := s.List(ctx, prefix, recursive)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(keys)
		return keys
	}
	if got := list("", false); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("List(\"\") = %q", got)
	}
	if got := list("", true); !slices.Equal(got, []string{"a", "a/b", "a/c", "a/c/d"}) {
		t.Fatalf("List(\"\", true) = %q", got)
	}
	if got := list("a", false); !slices.Equal(got, []string{"a/b", "a/c"}) {
		t.Fatalf("List(a) = %q", got)
	}
	if info, err := s.Stat(ctx, "a"); err != nil || !info.IsTerminal {
		t.Fatalf("Stat(a) = %+v, %v; want a value", info, err)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "a/b", "a/c/d"} {
		if s.Exists(ctx, k) {
			t.Fatalf("%s exists after Delete(a)", k)
		}
	}
}

// TestErrorsAreNotNotFound: denied access, a wrong mount and an unreachable
// server are errors, never fs.ErrNotExist.
func TestErrorsAreNotNotFound(t *testing.T) {
	t.Parallel()
	v := testenv.StartVault(t, testenv.VaultOptions{})
	ctx := context.Background()
	check := func(t *testing.T, s *Storage, want string, permission bool) {
		t.Helper()
		_, errLoad := s.Load(ctx, "a/b")
		_, errStat := s.Stat(ctx, "a/b")
		_, errList := s.List(ctx, "a", false)
		errStore := s.Store(ctx, "a/b", []byte("x"))
		errDelete := s.Delete(ctx, "a/b")
		errLock := s.Lock(ctx, "l")
		_, errTry := s.TryLock(ctx, "l")
		for name, err := range map[string]error{"Load": errLoad, "Stat": errStat, "List": errList, "Store": errStore, "Delete": errDelete, "Lock": errLock, "TryLock": errTry} {
			if err == nil || errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), want) {
				t.Fatalf("%s: %v; want an error containing %q that is not fs.ErrNotExist", name, err, want)
			}
			if permission != errors.Is(err, fs.ErrPermission) {
				t.Fatalf("%s: errors.Is(%v, fs.ErrPermission) = %v", name, err, !permission)
			}
			if strings.Contains(err.Error(), "wrong-token") {
				t.Fatalf("%s: error %q shows the token", name, err)
			}
		}
		if s.Exists(ctx, "a/b") {
			t.Fatal("Exists is true")
		}
	}
	t.Run("wrong token", func(t *testing.T) {
		check(t, newStorage(t, v, func(s *Storage) { s.Token = "wrong-token" }), "vault responded 403: permission denied", true)
	})
	t.Run("wrong mount", func(t *testing.T) {
		check(t, newStorage(t, v, func(s *Storage) { s.Mount = "nomount" }), "vault responded 404: no handler for route", false)
	})
	t.Run("server down", func(t *testing.T) {
		down := testenv.StartVault(t, testenv.VaultOptions{})
		s := newStorage(t, down, func(s *Storage) { s.Timeout = caddy.Duration(2 * time.Second) })
		roundTrip(t, s, "a/b")
		down.Stop()
		check(t, s, "connection refused", false)
	})
}

func TestAuthTokenFile(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root := rootClient(t, v)
	addPolicy(t, root)
	newToken := func() string {
		return write(t, root, "auth/token/create", map[string]any{"policies": []string{"caddy"}, "ttl": "1h"}).Auth.ClientToken
	}
	first := newToken()
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(first+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newStorage(t, v, func(s *Storage) {
		s.Token = ""
		s.AuthMethod = "token_file"
		s.TokenFile = file
	})
	roundTrip(t, s, "one")

	// Vault Agent replaces the token and the old one is revoked: the file
	// is read again when Vault rejects the old one
	second := newToken()
	if err := os.WriteFile(file, []byte(second), 0o600); err != nil {
		t.Fatal(err)
	}
	write(t, root, "auth/token/revoke", map[string]any{"token": first})
	roundTrip(t, s, "two")
	if s.client.api.Token() != second {
		t.Fatal("the storage does not use the token now in the file")
	}
}

func TestAuthAppRole(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root := rootClient(t, v)
	addPolicy(t, root)
	write(t, root, "sys/auth/approle-caddy", map[string]any{"type": "approle"})
	write(t, root, "auth/approle-caddy/role/caddy", map[string]any{"token_policies": []string{"caddy"}, "token_ttl": "1h"})
	roleID, err := root.Logical().Read("auth/approle-caddy/role/caddy/role-id")
	if err != nil {
		t.Fatal(err)
	}
	secretID := write(t, root, "auth/approle-caddy/role/caddy/secret-id", nil).Data["secret_id"].(string)
	t.Setenv("CADDY_ACME_TEST_SECRET_ID", secretID)
	s := newStorage(t, v, func(s *Storage) {
		s.Token = ""
		s.AuthMethod = "approle"
		s.AuthMount = "approle-caddy"
		s.RoleID = roleID.Data["role_id"].(string)
		s.SecretID = "{env.CADDY_ACME_TEST_SECRET_ID}"
	})
	roundTrip(t, s, "a")

	// a revoked token is replaced by logging in again
	s.client.mu.Lock()
	s.client.lastLogin = time.Time{} // as if the login were older than reloginAfterDenied
	s.client.mu.Unlock()
	first := s.client.api.Token()
	write(t, root, "auth/token/revoke", map[string]any{"token": first})
	roundTrip(t, s, "b")
	if s.client.api.Token() == first {
		t.Fatal("still the revoked token")
	}

	t.Run("wrong secret id", func(t *testing.T) {
		w := newStorage(t, v, func(w *Storage) {
			w.Token = ""
			w.AuthMethod = "approle"
			w.AuthMount = "approle-caddy"
			w.RoleID = s.RoleID
			w.SecretID = "00000000-0000-0000-0000-000000000000"
		})
		_, err := w.Load(context.Background(), "a")
		if err == nil || errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "approle login at auth/approle-caddy/login: vault responded 400") {
			t.Fatalf("Load with a wrong secret_id: %v", err)
		}
		if strings.Contains(err.Error(), "00000000-0000") {
			t.Fatalf("error %q shows the secret_id", err)
		}
	})
}

// TestAuthKubernetes logs in like Kong's kubernetes auth: a JWT from a file
// POSTed with the role to auth/kubernetes/login — served here by Vault's jwt
// auth method mounted at that path, trusting a key this test generates.
func TestAuthKubernetes(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root := rootClient(t, v)
	addPolicy(t, root)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	write(t, root, "sys/auth/kubernetes", map[string]any{"type": "jwt"})
	write(t, root, "auth/kubernetes/config", map[string]any{
		"jwt_validation_pubkeys": []string{pubPEM},
		"jwt_supported_algs":     []string{"ES256"},
	})
	write(t, root, "auth/kubernetes/role/caddy", map[string]any{
		"role_type":       "jwt",
		"bound_audiences": []string{"vault"},
		"user_claim":      "sub",
		"token_policies":  []string{"caddy"},
		"token_ttl":       "1h",
	})
	now := time.Now()
	jwt := signJWT(t, key, map[string]any{
		"iss": "kubernetes/serviceaccount",
		"sub": "system:serviceaccount:caddy:caddy",
		"aud": "vault",
		"iat": now.Unix(),
		"nbf": now.Add(-time.Minute).Unix(),
		"exp": now.Add(time.Hour).Unix(),
	})
	jwtFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(jwtFile, []byte(jwt), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newStorage(t, v, func(s *Storage) {
		s.Token = ""
		s.AuthMethod = "kubernetes"
		s.Role = "caddy"
		s.JWTPath = jwtFile
	})
	roundTrip(t, s, "a")

	t.Run("wrong role", func(t *testing.T) {
		w := newStorage(t, v, func(w *Storage) {
			w.Token = ""
			w.AuthMethod = "kubernetes"
			w.Role = "nobody"
			w.JWTPath = jwtFile
		})
		_, err := w.Load(context.Background(), "a")
		if err == nil || errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "kubernetes login at auth/kubernetes/login: vault responded 400") {
			t.Fatalf("Load with a wrong role: %v", err)
		}
	})
	t.Run("missing jwt", func(t *testing.T) {
		w := newStorage(t, v, func(w *Storage) {
			w.Token = ""
			w.AuthMethod = "kubernetes"
			w.Role = "caddy"
			w.JWTPath = jwtFile + ".missing"
		})
		if _, err := w.Load(context.Background(), "a"); err == nil || !strings.Contains(err.Error(), "reading jwt_path") {
			t.Fatalf("Load without a JWT file: %v", err)
		}
	})
}

// signJWT returns an ES256 JSON Web Token of claims.
func signJWT(t testing.TB, key *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := base64.RawURLEncoding
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	signed := enc.EncodeToString([]byte(`{"alg":"ES256","typ":"JWT"}`)) + "." + enc.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + enc.EncodeToString(sig)
}

// TestTokenRenewal: tokens with a TTL of a few seconds keep working well
// past it — a renewable token because it is renewed, an AppRole login whose
// token reaches its max TTL because the storage logs in again.
func TestTokenRenewal(t *testing.T) {
	t.Parallel()
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root := rootClient(t, v)
	addPolicy(t, root)
	// short, yet long enough that a loaded machine renews in time
	const ttl = 4 * time.Second
	// keep working for this long: past the TTL, and past the max TTL of
	// the AppRole tokens
	const span = 5 * ttl / 2

	keepUsing := func(t *testing.T, s *Storage) {
		roundTrip(t, s, "renew")
		end := time.Now().Add(span)
		for time.Now().Before(end) {
			if _, err := s.Load(context.Background(), "renew"); err != nil {
				t.Fatalf("Load %s after the start: %v", time.Until(end)-span, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}

	t.Run("renewable token", func(t *testing.T) {
		t.Parallel()
		token := write(t, root, "auth/token/create", map[string]any{"policies": []string{"caddy"}, "ttl": ttl.String(), "renewable": true}).Auth.ClientToken
		s := newStorage(t, v, func(s *Storage) { s.Token = token })
		keepUsing(t, s)
		look, err := root.Auth().Token().Lookup(token)
		if err != nil {
			t.Fatalf("the token expired: %v", err)
		}
		if ttl, _ := look.TokenTTL(); ttl <= 0 {
			t.Fatalf("token TTL %s", ttl)
		}
	})

	t.Run("approle login past max ttl", func(t *testing.T) {
		t.Parallel()
		write(t, root, "sys/auth/approle", map[string]any{"type": "approle"})
		write(t, root, "auth/approle/role/short", map[string]any{
			"token_policies":        []string{"caddy"},
			"token_ttl":             ttl.String(),
			"token_max_ttl":         (2 * ttl).String(),
			"bind_secret_id":        false,
			"token_bound_cidrs":     []string{"127.0.0.1/32"},
			"secret_id_bound_cidrs": []string{"127.0.0.1/32"},
		})
		sec, err := root.Logical().Read("auth/approle/role/short/role-id")
		if err != nil {
			t.Fatal(err)
		}
		s := newStorage(t, v, func(s *Storage) {
			s.Token = ""
			s.AuthMethod = "approle"
			s.RoleID = sec.Data["role_id"].(string)
		})
		roundTrip(t, s, "x")
		first := s.client.api.Token()
		keepUsing(t, s)
		if s.client.api.Token() == first {
			t.Fatal("no new login after the token's max TTL")
		}
	})
}

// TestNamespace: every request, logins too, carries X-Vault-Namespace.
// Vault OSS has no namespaces; a recording proxy in front of the real
// server checks the header.
func TestNamespace(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root := rootClient(t, v)
	addPolicy(t, root)
	write(t, root, "sys/auth/approle", map[string]any{"type": "approle"})
	write(t, root, "auth/approle/role/ns", map[string]any{"token_policies": []string{"caddy"}, "bind_secret_id": false, "secret_id_bound_cidrs": []string{"127.0.0.1/32"}})
	sec, err := root.Logical().Read("auth/approle/role/ns/role-id")
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string][]string{} // path → namespace headers
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path] = append(seen[r.URL.Path], r.Header.Get("X-Vault-Namespace"))
		mu.Unlock()
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	s := newStorage(t, v, func(s *Storage) {
		s.Address = srv.URL
		s.Namespace = "team-a/"
		s.Token = ""
		s.AuthMethod = "approle"
		s.RoleID = sec.Data["role_id"].(string)
	})
	// Vault OSS ignores the header (it only has the root namespace), so the
	// requests work
	roundTrip(t, s, "a")
	mu.Lock()
	defer mu.Unlock()
	if len(seen["/v1/auth/approle/login"]) == 0 || len(seen["/v1/secret/data/"+s.prefix+"/a"]) != 2 {
		t.Fatalf("requests seen: %v; want the login, the write and the read", seen)
	}
	for path, headers := range seen {
		for _, h := range headers {
			if h != "team-a/" {
				t.Fatalf("request to %s carried X-Vault-Namespace %q, want team-a/", path, h)
			}
		}
	}
}

func TestTLS(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{TLS: true})
	for _, tc := range []struct {
		name    string
		tls     *backend.TLS
		wantErr string
	}{
		{"ca file", &backend.TLS{CAFile: v.CAFile}, ""},
		{"server name", &backend.TLS{CAFile: v.CAFile, ServerName: "localhost"}, ""},
		{"wrong server name", &backend.TLS{CAFile: v.CAFile, ServerName: "vault.example"}, "certificate is valid for"},
		{"unknown authority", nil, "certificate signed by unknown authority"},
		{"insecure", &backend.TLS{InsecureSkipVerify: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStorage(t, v, func(s *Storage) { s.TLS = tc.tls })
			err := s.Store(context.Background(), "a", []byte("x"))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				roundTrip(t, s, "a")
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Store: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestLockEdgeCases covers what the conformance suite cannot arrange: a lock
// whose metadata was set by someone else, and a lock taken from its holder
// after its lease ran out.
func TestLockEdgeCases(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root := rootClient(t, v)
	ctx := context.Background()
	s := newStorage(t, v, nil)
	kv := root.KVv2("secret")

	t.Run("foreign lease in metadata", func(t *testing.T) {
		path := s.lockPrefix + "/foreign"
		if err := kv.PutMetadata(ctx, path, api.KVMetadataPutInput{DeleteVersionAfter: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if err := s.Lock(ctx, "foreign"); err != nil {
			t.Fatal(err)
		}
		defer s.Unlock(ctx, "foreign")
		meta, err := kv.GetMetadata(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		if meta.DeleteVersionAfter != 2*time.Second {
			t.Fatalf("delete_version_after = %s after Lock, want the 2s lease", meta.DeleteVersionAfter)
		}
		cur := meta.Versions[strconv.Itoa(meta.CurrentVersion)]
		if d := cur.DeletionTime.Sub(cur.CreatedTime); d != 2*time.Second {
			t.Fatalf("the current version expires %s after it was written, want 2s", d)
		}
	})

	t.Run("taken over", func(t *testing.T) {
		if err := s.Lock(ctx, "stolen"); err != nil {
			t.Fatal(err)
		}
		// what another node writes once the lease ran out
		if _, err := kv.Put(ctx, s.lockPrefix+"/stolen", map[string]any{"token": "someone-else"}); err != nil {
			t.Fatal(err)
		}
		if err := s.RenewLockLease(ctx, "stolen", time.Minute); !errors.Is(err, errLost) {
			t.Fatalf("RenewLockLease of a lock taken over: %v, want errLost", err)
		}
		if err := s.Unlock(ctx, "stolen"); !errors.Is(err, errLost) {
			t.Fatalf("Unlock of a lock taken over: %v, want errLost", err)
		}
		sec, err := kv.Get(ctx, s.lockPrefix+"/stolen")
		if err != nil || sec.Data["token"] != "someone-else" {
			t.Fatalf("the new holder's lock after the old holder's Unlock: %v, %v", sec, err)
		}
		if err := s.Unlock(ctx, "stolen"); !errors.Is(err, errNotHeld) {
			t.Fatalf("second Unlock: %v, want errNotHeld", err)
		}
	})

	t.Run("lease of whole seconds", func(t *testing.T) {
		// Vault keeps delete_version_after in seconds: 1.5s becomes 2s,
		// never 1s, and a first Lock writes one version
		h := newStorage(t, v, func(s *Storage) { s.LockLease = caddy.Duration(1500 * time.Millisecond) })
		if err := h.Lock(ctx, "half"); err != nil {
			t.Fatal(err)
		}
		defer h.Unlock(ctx, "half")
		meta, err := kv.GetMetadata(ctx, h.lockPrefix+"/half")
		if err != nil {
			t.Fatal(err)
		}
		if meta.DeleteVersionAfter != 2*time.Second || meta.CurrentVersion != 1 {
			t.Fatalf("delete_version_after %s, version %d; want 2s and 1", meta.DeleteVersionAfter, meta.CurrentVersion)
		}
	})

	t.Run("concurrent renewals", func(t *testing.T) {
		// RenewLockLease racing the background refresh and itself: all
		// are writes of the holder, none may report the lock lost
		if err := s.Lock(ctx, "renewed"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() { errs <- s.RenewLockLease(ctx, "renewed", time.Minute) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("RenewLockLease: %v", err)
			}
		}
		if err := s.Unlock(ctx, "renewed"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("context", func(t *testing.T) {
		if err := s.Lock(ctx, "busy"); err != nil {
			t.Fatal(err)
		}
		defer s.Unlock(ctx, "busy")
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.Lock(cctx, "busy"); !errors.Is(err, context.Canceled) {
			t.Fatalf("Lock with a cancelled context: %v", err)
		}
		if ok, err := s.TryLock(ctx, "busy"); ok || err != nil {
			t.Fatalf("TryLock of a held lock: %v, %v", ok, err)
		}
	})
}

// TestOverwrite: a node that stored or loaded a key overwrites it with one
// check-and-set write on the version it knows, and falls back to the full
// Store when another node changed the key.
func TestOverwrite(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root := rootClient(t, v)
	a := newStorage(t, v, nil)
	b := newStorage(t, v, nil)
	storagetest.Overwrite(t, a, b, func(cs certmagic.Storage, k string) (bool, bool) {
		s := cs.(*Storage)
		ver, ok := s.known.Get(k)
		meta, err := root.KVv2("secret").GetMetadata(t.Context(), s.prefix+"/"+k)
		return ok, ok && err == nil && int(ver) == meta.CurrentVersion
	})
}
