package consul

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/consul/api"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// testLease is the shortest lock_lease Consul allows (a 10s session TTL).
const testLease = 20 * time.Second

// opener returns a storagetest.Opener of storages on the agent c, each
// configured by base (copied) with the namespace as key prefix.
func opener(base Storage) storagetest.Opener {
	return func(t testing.TB, namespace string) certmagic.Storage {
		t.Helper()
		s := base
		s.KeyPrefix = "caddy-acme-test/" + namespace
		if err := provision(t, &s); err != nil {
			t.Fatalf("Provision: %v", err)
		}
		return &s
	}
}

func crash(s certmagic.Storage) { s.(*Storage).crash() }

// TestConformance runs the storage suite against a real Consul agent.
func TestConformance(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	storagetest.Run(t, opener(Storage{
		Address: c.Addr,
		Options: backend.Options{LockLease: caddy.Duration(testLease)},
	}), storagetest.Options{Lease: testLease, Crash: crash})
}

// TestConformanceEncryptedACLTLS runs the suite once more over HTTPS with a
// client certificate, ACLs and encryption at rest (lock timing was checked
// above, so it is skipped).
func TestConformanceEncryptedACLTLS(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{ACLToken: "root-" + backend.Token(), TLSClientAuth: true})
	storagetest.Run(t, opener(Storage{
		Address: c.HTTPSAddr,
		Token:   c.Token,
		TLS:     &backend.TLS{CAFile: c.CAFile, CertFile: c.ClientCertFile, KeyFile: c.ClientKeyFile},
		Options: backend.Options{EncryptionKey: testKey(t), LockLease: caddy.Duration(testLease)},
	}), storagetest.Options{})
}

func newStorage(t testing.TB, s Storage) *Storage {
	t.Helper()
	if s.KeyPrefix == "" {
		s.KeyPrefix = "caddy-acme-test/" + backend.Token()[:8]
	}
	if s.LockLease == 0 {
		s.LockLease = caddy.Duration(testLease)
	}
	if err := provision(t, &s); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return &s
}

func rawClient(t testing.TB, c *testenv.Consul, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = c.Addr
	cfg.Token = token
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func TestACL(t *testing.T) {
	t.Parallel()
	root := "root-" + backend.Token()
	c := testenv.StartConsul(t, testenv.ConsulOptions{ACLToken: root})
	ctx := t.Context()

	good := newStorage(t, Storage{Address: c.Addr, Token: root, KeyPrefix: "acl-test"})
	if err := good.Store(ctx, "a/b", []byte("v")); err != nil {
		t.Fatalf("Store with the management token: %v", err)
	}

	// A token limited to what the type's doc comment says is needed.
	admin := rawClient(t, c, root)
	limited := policyToken(t, admin, "caddy-acme", `key_prefix "acl-test" { policy = "write" } session_prefix "" { policy = "write" }`)
	a := newStorage(t, Storage{Address: c.Addr, Token: limited, KeyPrefix: "acl-test"})
	b := newStorage(t, Storage{Address: c.Addr, Token: limited, KeyPrefix: "acl-test"})
	if got, err := a.Load(ctx, "a/b"); err != nil || string(got) != "v" {
		t.Fatalf("Load with the documented policy = %q, %v", got, err)
	}
	if err := a.Store(ctx, "big", bytes.Repeat([]byte("x"), 600<<10)); err != nil {
		t.Fatalf("Store of a chunked value with the documented policy: %v", err)
	}
	if keys, err := a.List(ctx, "", true); err != nil || len(keys) != 3 {
		t.Fatalf("List with the documented policy = %q, %v", keys, err)
	}
	if err := a.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatalf("Lock with the documented policy: %v", err)
	}
	if ok, err := b.TryLock(ctx, "issue_cert_x"); ok || err != nil {
		t.Fatalf("TryLock of a held lock = %v, %v", ok, err)
	}
	if err := a.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}

	// Wrong, missing and too weak tokens: clear errors, never "not found".
	for _, tt := range []struct {
		name, token, prefix string
	}{
		{"wrong token", "00000000-0000-0000-0000-000000000000", "acl-test"},
		{"no token", "", "acl-test"},
		{"token for another prefix", limited, "elsewhere"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newStorage(t, Storage{Address: c.Addr, Token: tt.token, KeyPrefix: tt.prefix})
			checks := map[string]error{}
			_, checks["Load"] = s.Load(ctx, "a/b")
			_, checks["Stat"] = s.Stat(ctx, "a/b")
			_, checks["List"] = s.List(ctx, "a", false)
			_, checks["List root"] = s.List(ctx, "", true)
			checks["Store"] = s.Store(ctx, "a/c", []byte("x"))
			checks["Delete"] = s.Delete(ctx, "a/b")
			checks["Lock"] = s.Lock(ctx, "l")
			for op, err := range checks {
				if err == nil {
					t.Errorf("%s succeeded", op)
					continue
				}
				if errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s: reported as not found: %v", op, err)
				}
				if !strings.Contains(err.Error(), "consul denied access") && !strings.Contains(err.Error(), "consul hid keys") {
					t.Errorf("%s: error does not say access was denied: %v", op, err)
				}
				if tt.token != "" && strings.Contains(err.Error(), tt.token) {
					t.Errorf("%s: error shows the token: %v", op, err)
				}
			}
			if s.Exists(ctx, "a/b") {
				t.Error("Exists is true without access")
			}
		})
	}
	if got, err := good.Load(ctx, "a/b"); err != nil || string(got) != "v" {
		t.Fatalf("the value changed after denied writes: %q, %v", got, err)
	}
}

// TestEnvironmentIgnored checks that Consul's CONSUL_HTTP_TOKEN does not
// reach requests of a storage configured without a token.
func TestEnvironmentIgnored(t *testing.T) {
	// t.Setenv: not parallel.
	root := "root-" + backend.Token()
	c := testenv.StartConsul(t, testenv.ConsulOptions{ACLToken: root})
	t.Setenv("CONSUL_HTTP_TOKEN", root)
	t.Setenv("CONSUL_NAMESPACE", "ns-from-env")
	s := newStorage(t, Storage{Address: c.Addr})
	if err := s.Store(t.Context(), "k", []byte("v")); err == nil || !strings.Contains(err.Error(), "denied") {
		t.Fatalf("Store without a configured token = %v, want access denied", err)
	}
	withToken := newStorage(t, Storage{Address: c.Addr, Token: root})
	if err := withToken.Store(t.Context(), "k", []byte("v")); err != nil {
		t.Fatalf("Store with the configured token (CONSUL_NAMESPACE set, ignored): %v", err)
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{TLSClientAuth: true})
	ctx := t.Context()
	client := backend.TLS{CAFile: c.CAFile, CertFile: c.ClientCertFile, KeyFile: c.ClientKeyFile}

	s := newStorage(t, Storage{Address: c.HTTPSAddr, TLS: &client})
	if err := s.Store(ctx, "x", []byte("over tls")); err != nil {
		t.Fatalf("Store over TLS: %v", err)
	}
	named := client
	named.ServerName = "localhost"
	if got, err := newStorage(t, Storage{Address: c.HTTPSAddr, TLS: &named, KeyPrefix: s.prefix}).Load(ctx, "x"); err != nil || string(got) != "over tls" {
		t.Fatalf("Load over TLS with server_name = %q, %v", got, err)
	}

	for _, tt := range []struct {
		name    string
		tls     backend.TLS
		wantErr string
	}{
		{"untrusted server", backend.TLS{CertFile: c.ClientCertFile, KeyFile: c.ClientKeyFile}, "certificate"},
		{"wrong server name", backend.TLS{CAFile: c.CAFile, ServerName: "other.example", CertFile: c.ClientCertFile, KeyFile: c.ClientKeyFile}, "certificate"},
		// TLS 1.3: the client may only see the server hang up.
		{"no client certificate", backend.TLS{CAFile: c.CAFile}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := newStorage(t, Storage{Address: c.HTTPSAddr, TLS: &tt.tls, KeyPrefix: s.prefix, Timeout: caddy.Duration(5 * time.Second)})
			_, err := bad.Load(ctx, "x")
			if err == nil || errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Load = %v, want a TLS error mentioning %q", err, tt.wantErr)
			}
		})
	}
	insecure := client
	insecure.CAFile = ""
	insecure.InsecureSkipVerify = true
	if _, err := newStorage(t, Storage{Address: c.HTTPSAddr, TLS: &insecure, KeyPrefix: s.prefix}).Load(ctx, "x"); err != nil {
		t.Fatalf("Load with insecure_skip_verify: %v", err)
	}
}

// TestLargeValues checks chunking: values above Consul's 512 KiB value
// limit, the layout, replacement in both directions, and cleanup.
func TestLargeValues(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	ctx := t.Context()
	raw := rawClient(t, c, "")
	for _, enc := range []bool{false, true} {
		name := "plain"
		cfg := Storage{Address: c.Addr}
		if enc {
			name = "encrypted"
			cfg.EncryptionKey = testKey(t)
		}
		t.Run(name, func(t *testing.T) {
			s := newStorage(t, cfg)
			chunkKeys := func() []string {
				t.Helper()
				keys, _, err := raw.KV().Keys(s.prefix+chunksSuffix+"/", "", nil)
				if err != nil {
					t.Fatal(err)
				}
				return keys
			}
			for _, size := range []int{inlineMax - 100, inlineMax + 1, 1 << 20, 3<<20 + 17} {
				v := make([]byte, size)
				if _, err := rand.Read(v); err != nil {
					t.Fatal(err)
				}
				if err := s.Store(ctx, "dir/big", v); err != nil {
					t.Fatalf("Store of %d bytes: %v", size, err)
				}
				got, err := s.Load(ctx, "dir/big")
				if err != nil || !bytes.Equal(got, v) {
					t.Fatalf("Load of %d bytes: %d bytes, %v", size, len(got), err)
				}
				info, err := s.Stat(ctx, "dir/big")
				if err != nil || info.Size != int64(size) || !info.IsTerminal {
					t.Fatalf("Stat of %d bytes = %+v, %v", size, info, err)
				}
				sealed := len(s.rt.Sealer.Seal("dir/big", v))
				wantChunks := 0
				if sealed > inlineMax {
					wantChunks = (sealed + chunkSize - 1) / chunkSize
				}
				if got := chunkKeys(); len(got) != wantChunks {
					t.Fatalf("after storing %d bytes, %d chunk keys remain, want %d: %q", size, len(got), wantChunks, got)
				}
			}
			if keys, err := s.List(ctx, "", true); err != nil || strings.Join(keys, ",") != "dir,dir/big" {
				t.Fatalf("List shows chunks: %q, %v", keys, err)
			}
			// A small value replacing a large one leaves the large one's
			// chunks, unreachable, until they are old enough for the next
			// large Store to take them for abandoned (or the key's Delete).
			before := len(chunkKeys())
			if err := s.Store(ctx, "dir/big", []byte("small again")); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Load(ctx, "dir/big"); err != nil || string(got) != "small again" {
				t.Fatalf("Load after a small value replaced a large one = %q, %v", got, err)
			}
			if n := len(chunkKeys()); n != before {
				t.Fatalf("%d chunk keys after a small Store, want the %d before", n, before)
			}
			// An abandoned generation from long ago (a writer that died).
			abandoned := s.ownChunks("dir/big") + "1000-0badc0de.0000"
			if _, err := raw.KV().Put(&api.KVPair{Key: abandoned, Value: []byte("x")}, nil); err != nil {
				t.Fatal(err)
			}
			big := make([]byte, 1<<20)
			if err := s.Store(ctx, "dir/big", big); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Load(ctx, "dir/big"); err != nil || !bytes.Equal(got, big) {
				t.Fatalf("Load of 1 MiB: %d bytes, %v", len(got), err)
			}
			own := (len(s.rt.Sealer.Seal("k", big)) + chunkSize - 1) / chunkSize
			if n := len(chunkKeys()); n != own+before {
				t.Fatalf("%d chunk keys after a large Store, want its %d and the %d recent ones", n, own, before)
			}
			if p, _, _ := raw.KV().Get(abandoned, nil); p != nil {
				t.Fatal("the abandoned chunk was not removed")
			}
			if err := s.Delete(ctx, "dir"); err != nil {
				t.Fatal(err)
			}
			if n := len(chunkKeys()); n != 0 {
				t.Fatalf("%d chunk keys remain after deleting the directory", n)
			}
			tooBig := make([]byte, maxChunks*chunkSize+1)
			if err := s.Store(ctx, "huge", tooBig); err == nil || !strings.Contains(err.Error(), "limit") {
				t.Fatalf("Store of %d bytes = %v, want the size limit", len(tooBig), err)
			}
		})
	}
}

// TestLargeValueRaces stores large and small values and deletes the key
// from two nodes at once: every Load sees a whole value or none, and no
// chunk is left behind.
func TestLargeValueRaces(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	ctx := t.Context()
	a := newStorage(t, Storage{Address: c.Addr})
	b := newStorage(t, Storage{Address: c.Addr, KeyPrefix: a.prefix})
	values := [][]byte{bytes.Repeat([]byte("a"), 900<<10), bytes.Repeat([]byte("b"), 10), bytes.Repeat([]byte("c"), 600<<10)}
	errs := make(chan error, 100)
	var wg sync.WaitGroup
	for w, nodes := range [][]*Storage{{a, b}, {b, a}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 12 {
				s := nodes[i%2]
				var err error
				if w == 0 && i%5 == 4 {
					err = s.Delete(ctx, "k")
				} else {
					err = s.Store(ctx, "k", values[(i+w)%len(values)])
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	reads := 0
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		v, err := a.Load(ctx, "k")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Load: %v", err)
		}
		if err == nil && (len(v) == 0 || v[0] < 'a' || v[0] > 'c' || !bytes.Equal(v, values[v[0]-'a'])) {
			t.Fatalf("torn or partial value of %d bytes", len(v))
		}
		reads++
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d loads", reads)
	// Whatever won, a last Store wins, and Delete leaves no chunk.
	raw := rawClient(t, c, "")
	chunks := func() int {
		keys, _, err := raw.KV().Keys(a.prefix+chunksSuffix+"/", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		return len(keys)
	}
	if err := b.Store(ctx, "k", values[0]); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Load(ctx, "k"); err != nil || !bytes.Equal(v, values[0]) {
		t.Fatalf("final Load: %d bytes, %v", len(v), err)
	}
	if err := a.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if n := chunks(); n != 0 {
		t.Fatalf("%d chunk keys after Delete", n)
	}
}

// TestUnreachable checks that a Consul that is down is an error, never a
// missing key, and that Provision did not need it.
func TestUnreachable(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	s := newStorage(t, Storage{Address: c.Addr, Timeout: caddy.Duration(2 * time.Second)})
	ctx := t.Context()
	if err := s.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	c.Stop()
	_, err := s.Load(ctx, "k")
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load from a stopped Consul = %v, want a connection error", err)
	}
	_, err = s.Stat(ctx, "k")
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat from a stopped Consul = %v, want a connection error", err)
	}
	_, err = s.List(ctx, "", true)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("List from a stopped Consul = %v, want a connection error", err)
	}
	if err := s.Lock(ctx, "l"); err == nil {
		t.Fatal("Lock on a stopped Consul succeeded")
	}
}

// TestLockDetails covers what the suite does not: lock keys and sessions
// in Consul, lock keys outside the listed key space, a lock lost to
// session expiry, and a waiter that outlives the session TTL.
func TestLockDetails(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	ctx := t.Context()
	raw := rawClient(t, c, "")
	a := newStorage(t, Storage{Address: c.Addr})
	b := newStorage(t, Storage{Address: c.Addr, KeyPrefix: a.prefix})
	if err := a.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}

	if err := a.Lock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	pair, _, err := raw.KV().Get(a.prefix+".locks/issue_cert_example.com", nil)
	if err != nil || pair == nil {
		t.Fatalf("lock key: %v, %v", pair, err)
	}
	if pair.Session != a.st.locks["issue_cert_example.com"] || !strings.Contains(string(pair.Value), `"pid"`) {
		t.Fatalf("lock key session %q value %q", pair.Session, pair.Value)
	}
	se, _, err := raw.Session().Info(pair.Session, nil)
	if err != nil || se == nil {
		t.Fatalf("session: %v, %v", se, err)
	}
	if se.TTL != "10s" || se.LockDelay != 0 || se.Behavior != "delete" {
		t.Fatalf("session TTL %s, lock delay %s, behavior %s; want 10s, 0, delete", se.TTL, se.LockDelay, se.Behavior)
	}
	if keys, err := a.List(ctx, "", true); err != nil || len(keys) != 1 {
		t.Fatalf("List shows lock keys: %q, %v", keys, err)
	}

	// Unlock by a node that does not hold it: an error, and nothing changes.
	if err := b.Unlock(ctx, "issue_cert_example.com"); err == nil || !errors.Is(err, errNotHeld) {
		t.Fatalf("b.Unlock of a's lock = %v", err)
	}
	if err := a.Unlock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	if pair, _, _ := raw.KV().Get(a.prefix+".locks/issue_cert_example.com", nil); pair != nil {
		t.Fatalf("lock key left after Unlock: %+v", pair)
	}
	if se, _, _ := raw.Session().Info(se.ID, nil); se != nil {
		t.Fatal("session left after Unlock")
	}

	// A lock whose session is destroyed behind the holder's back is lost:
	// RenewLockLease says so and Unlock does not release the new holder's.
	if err := a.Lock(ctx, "lost"); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Session().Destroy(a.st.locks["lost"], nil); err != nil {
		t.Fatal(err)
	}
	if err := a.RenewLockLease(ctx, "lost", testLease); err == nil || !errors.Is(err, errSessionGone) {
		t.Fatalf("RenewLockLease of a lost lock = %v", err)
	}
	if err := b.Lock(ctx, "lost"); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx, "lost"); err != nil {
		t.Fatalf("a.Unlock of its lost lock: %v", err)
	}
	if ok, err := a.TryLock(ctx, "lost"); ok || err != nil {
		t.Fatalf("a.TryLock after a's stale Unlock = %v, %v; b's lock was released", ok, err)
	}
	if err := b.Unlock(ctx, "lost"); err != nil {
		t.Fatal(err)
	}

	// A waiter keeps its own session alive past the TTL and gets the lock
	// when the holder unlocks; its wait survives blocking-query timeouts.
	if err := a.Lock(ctx, "long"); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "long") }()
	select {
	case err := <-got:
		t.Fatalf("b.Lock returned while a holds the lock: %v", err)
	case <-time.After(testLease): // two session TTLs
	}
	if err := a.Unlock(ctx, "long"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("b.Lock after a long wait: %v", err)
		}
	case <-time.After(30 * time.Second): // a bound against hanging, not a speed check
		t.Fatal("b.Lock did not return after a.Unlock")
	}
	if err := b.Unlock(ctx, "long"); err != nil {
		t.Fatal(err)
	}

	// No session is left behind by waits, TryLock failures or unlocks.
	sessions, _, err := raw.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 0 {
		t.Fatalf("%d sessions left", len(sessions))
	}
}

// TestCaddyJSON loads the module by its ID from JSON, as Caddy does.
func TestCaddyJSON(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	mod, err := ctx.LoadModuleByID("caddy.storage.acme_consul",
		[]byte(`{"address":"`+c.Addr+`","key_prefix":"json-test","lock_lease":"40s"}`))
	if err != nil {
		t.Fatal(err)
	}
	conv, ok := mod.(caddy.StorageConverter)
	if !ok {
		t.Fatalf("%T is not a StorageConverter", mod)
	}
	s, err := conv.CertMagicStorage()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Store(t.Context(), "certificates/x", []byte("y")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + c.Addr + "/v1/kv/json-test/certificates/x?raw")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	if resp.StatusCode != 200 || body.String() != "y" {
		t.Fatalf("raw value at json-test/certificates/x: %s %q", resp.Status, body.String())
	}
	if got := mod.(*Storage).ttl; got != 20*time.Second {
		t.Fatalf("session TTL %s, want 20s (half of lock_lease)", got)
	}
}

// policyToken creates an ACL policy with rules and returns the secret of
// a token that has only it.
func policyToken(t *testing.T, admin *api.Client, name, rules string) string {
	t.Helper()
	policy, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := admin.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return token.SecretID
}

// TestOverwrite: a node that stored or loaded a key overwrites it in one
// transaction (check-index on the ModifyIndex it knows, then set), and
// falls back to the full Store when another node changed the key.
func TestOverwrite(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	raw := rawClient(t, c, "")
	a := newStorage(t, Storage{Address: c.Addr})
	b := newStorage(t, Storage{Address: c.Addr, KeyPrefix: a.KeyPrefix})
	storagetest.Overwrite(t, a, b, func(cs certmagic.Storage, k string) (bool, bool) {
		s := cs.(*Storage)
		pair, _, err := raw.KV().Get(s.dataKey(k), nil)
		if err != nil {
			t.Fatal(err)
		}
		idx, ok := s.st.known.Get(k)
		return ok, ok && pair != nil && idx == pair.ModifyIndex
	})
}

// TestUncompressedOnLoopback: to a Consul on a loopback address the client
// asks for responses without gzip; to any other address, Go's default
// (gzip asked) stands. Consul gzips a large response when asked, shown by
// the same request through a transport that asks.
func TestUncompressedOnLoopback(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1:8500": true, "127.8.0.1:8500": true, "[::1]:8500": true, "localhost:8500": true, "LocalHost:8500": true,
		"consul.service:8500": false, "10.0.0.1:8500": false, "[2001:db8::1]:8500": false, "localhost": false,
	} {
		if got := onLoopback(addr); got != want {
			t.Errorf("onLoopback(%q) = %v, want %v", addr, got, want)
		}
		pc, err := newClient(connSettings{address: addr, scheme: "http", timeout: defaultTimeout})
		if err != nil {
			t.Fatal(err)
		}
		if pc.transport.DisableCompression != want {
			t.Errorf("%s: DisableCompression = %v, want %v", addr, pc.transport.DisableCompression, want)
		}
	}

	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	pc, err := newClient(connSettings{address: c.Addr, scheme: "http", timeout: defaultTimeout})
	if err != nil {
		t.Fatal(err)
	}
	key := "caddy-acme-test/gzip-" + backend.Token()[:8]
	value := bytes.Repeat([]byte("a compressible certificate chain "), 2048) // 66 KiB
	if _, err := pc.api.KV().Put(&api.KVPair{Key: key, Value: value}, nil); err != nil {
		t.Fatal(err)
	}
	get := func(rt http.RoundTripper) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+c.Addr+"/v1/kv/"+key, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var kv []api.KVPair
		if err := json.NewDecoder(resp.Body).Decode(&kv); err != nil || len(kv) != 1 || !bytes.Equal(kv[0].Value, value) {
			t.Fatalf("GET %s: %d pairs, %v", key, len(kv), err)
		}
		return resp
	}
	if resp := get(pc.transport); resp.Uncompressed || resp.Header.Get("Content-Encoding") != "" {
		t.Errorf("the client's response was compressed (Uncompressed %v, Content-Encoding %q)", resp.Uncompressed, resp.Header.Get("Content-Encoding"))
	}
	asking := pc.transport.Clone()
	asking.DisableCompression = false
	if resp := get(asking); !resp.Uncompressed {
		t.Error("Consul did not gzip the response to a request that asked for it: the check above proves nothing")
	}
}
