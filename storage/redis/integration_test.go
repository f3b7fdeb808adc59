package redis

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	goredis "github.com/redis/go-redis/v9"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// testLease is the lock lease of the storages under test: short, so that
// the suite's takeover checks are quick.
const testLease = 2 * time.Second

// provision provisions s and cleans it up when the test ends.
func provision(t testing.TB, s *Storage) *Storage {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := s.Provision(ctx); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Cleanup(); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	return s
}

// opener returns a storagetest.Opener of storages made by config, with the
// namespace as key prefix.
func opener(config func() *Storage) storagetest.Opener {
	return func(t testing.TB, namespace string) certmagic.Storage {
		return open(t, config, namespace)
	}
}

// open provisions a storage made by config with the namespace as key
// prefix.
func open(t testing.TB, config func() *Storage, namespace string) *Storage {
	s := config()
	s.KeyPrefix = namespace + ":"
	s.LockLease = caddy.Duration(testLease)
	return provision(t, s)
}

func conformance(t *testing.T, config func() *Storage) {
	storagetest.Run(t, opener(config), storagetest.Options{
		Lease: testLease,
		Crash: func(s certmagic.Storage) { s.(*Storage).crash() },
	})
}

func TestStandalone(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	conformance(t, func() *Storage { return &Storage{Addresses: []string{r.Addr}} })
}

func TestPasswordAndDB(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{Password: "default-user-pw"})
	t.Setenv("CADDY_ACME_TEST_REDIS_PASSWORD", "default-user-pw")
	config := func() *Storage {
		return &Storage{Addresses: []string{r.Addr}, Password: "{env.CADDY_ACME_TEST_REDIS_PASSWORD}", DB: 5}
	}
	conformance(t, config)

	// The data is in database 5, and nowhere else.
	s := open(t, config, "dbcheck")
	if err := s.Store(context.Background(), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	for db, want := range map[int]int64{0: 0, 5: 1} {
		conn := goredis.NewClient(&goredis.Options{Addr: r.Addr, Password: "default-user-pw", DB: db})
		got, err := conn.Exists(context.Background(), "dbcheck:v:k").Result()
		conn.Close()
		if err != nil || got != want {
			t.Fatalf("database %d has the value %d times (%v), want %d", db, got, err, want)
		}
	}

	// A wrong password is an error, not a missing key, and the error does
	// not show it.
	const wrong = "not-the-password-xyz"
	bad := provision(t, &Storage{Addresses: []string{r.Addr}, Password: wrong})
	_, err := bad.Load(context.Background(), "k")
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load with a wrong password: %v, want an error other than fs.ErrNotExist", err)
	}
	if strings.Contains(err.Error(), wrong) {
		t.Fatalf("error shows the password: %v", err)
	}
}

func TestACLUser(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{ACLUser: "caddy", ACLPass: "acl-secret"})
	conformance(t, func() *Storage {
		return &Storage{Addresses: []string{r.Addr}, Username: "caddy", Password: "acl-secret"}
	})
	// The default user is off: without the user, nothing works, and that
	// is reported as the error it is.
	anon := provision(t, &Storage{Addresses: []string{r.Addr}})
	for _, err := range []error{
		anon.Store(context.Background(), "k", []byte("v")),
		func() error { _, err := anon.Load(context.Background(), "k"); return err }(),
		func() error { _, err := anon.List(context.Background(), "", true); return err }(),
		func() error { _, err := anon.Stat(context.Background(), "k"); return err }(),
		anon.Lock(context.Background(), "l"),
	} {
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("without credentials: %v, want an authentication error", err)
		}
	}
}

func TestTLS(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{TLS: true})
	conformance(t, func() *Storage {
		return &Storage{Addresses: []string{r.Addr}, TLS: &backend.TLS{CAFile: r.CAFile, ServerName: testenv.RedisServerName}}
	})

	ctx := context.Background()
	for _, tc := range []struct {
		name string
		tls  *backend.TLS
		ok   bool
	}{
		{"ip address in certificate", &backend.TLS{CAFile: r.CAFile}, true},
		{"wrong server name", &backend.TLS{CAFile: r.CAFile, ServerName: "other.test"}, false},
		{"untrusted", &backend.TLS{ServerName: testenv.RedisServerName}, false},
		{"insecure", &backend.TLS{InsecureSkipVerify: true}, true},
		{"plain text", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := provision(t, &Storage{Addresses: []string{r.Addr}, TLS: tc.tls, DialTimeout: caddy.Duration(2 * time.Second), ReadTimeout: caddy.Duration(2 * time.Second)})
			err := s.Store(ctx, "tls/"+tc.name, []byte("x"))
			if (err == nil) != tc.ok {
				t.Fatalf("Store: %v, want success %v", err, tc.ok)
			}
		})
	}
}

func TestTLSClientCertificate(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{TLS: true, TLSClientAuth: true})
	conformance(t, func() *Storage {
		return &Storage{Addresses: []string{r.Addr}, TLS: &backend.TLS{
			CAFile: r.CAFile, ServerName: testenv.RedisServerName,
			CertFile: r.ClientCertFile, KeyFile: r.ClientKeyFile,
		}}
	})
	s := provision(t, &Storage{Addresses: []string{r.Addr}, TLS: &backend.TLS{CAFile: r.CAFile}})
	if err := s.Store(context.Background(), "k", []byte("v")); err == nil {
		t.Fatal("Store without a client certificate succeeded")
	}
}

func TestCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t)
	config := func() *Storage { return &Storage{Addresses: c.Addrs} }
	conformance(t, config)

	// The keys of one storage are spread over every master.
	s := open(t, config, "spread")
	for _, k := range []string{"a/b/c", "d/e", "f", "certificates/x/y/y.crt", "g/h/i/j/k"} {
		if err := s.Store(context.Background(), k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	var masters atomic.Int32 // ForEachMaster runs the function concurrently
	if err := c.Client(t).ForEachMaster(context.Background(), func(ctx context.Context, m *goredis.Client) error {
		keys, err := m.Keys(ctx, "spread:*").Result()
		if len(keys) > 0 {
			masters.Add(1)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if masters.Load() != 3 {
		t.Fatalf("keys on %d masters, want 3", masters.Load())
	}

	// One seed address and cluster: the rest of the cluster is found.
	one := open(t, func() *Storage { return &Storage{Addresses: c.Addrs[:1], Cluster: true} }, "spread")
	keys, err := one.List(context.Background(), "", true)
	if err != nil || len(keys) != 15 {
		t.Fatalf("List through one seed = %q, %v", keys, err)
	}
}

func TestSentinel(t *testing.T) {
	sen := testenv.StartRedisSentinel(t)
	config := func() *Storage {
		return &Storage{Addresses: sen.SentinelAddrs, MasterName: sen.MasterName, DB: 1}
	}
	conformance(t, config)

	// Data and locks survive a failover.
	ctx := context.Background()
	s := open(t, config, "failover")
	if err := s.Store(ctx, "certificates/a/a.crt", []byte("crt")); err != nil {
		t.Fatal(err)
	}
	if err := s.Lock(ctx, "issue_cert_a"); err != nil {
		t.Fatal(err)
	}
	if err := sen.Master.Client(t).Do(ctx, "WAIT", 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}
	sen.Failover(t)
	// go-redis finds the new master when the Sentinel announces it or a
	// command fails; until then reads may go to the old master (now a
	// replica) and writes fail.
	if err := eventually(func() error { return s.Store(ctx, "certificates/b/b.crt", []byte("new")) }); err != nil {
		t.Fatalf("Store after failover: %v\n%s", err, sen.Log())
	}
	if got, err := s.Load(ctx, "certificates/a/a.crt"); err != nil || string(got) != "crt" {
		t.Fatalf("Load after failover = %q, %v", got, err)
	}
	other := open(t, config, "failover")
	if ok, err := other.TryLock(ctx, "issue_cert_a"); ok || err != nil {
		t.Fatalf("TryLock of a lock held across the failover = %v, %v", ok, err)
	}
	if err := s.Unlock(ctx, "issue_cert_a"); err != nil {
		t.Fatal(err)
	}
	if keys, err := other.List(ctx, "certificates", true); err != nil || len(keys) != 4 {
		t.Fatalf("List after failover = %q, %v", keys, err)
	}
}

// eventually retries op for a while until it succeeds, for operations
// that fail while go-redis moves to a new master (a bound against hanging,
// not a timing assertion).
func eventually(op func() error) error {
	var err error
	for range 100 {
		if err = op(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

func TestKeyPrefixesIsolate(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	a := provision(t, &Storage{Addresses: []string{r.Addr}})
	b := provision(t, &Storage{Addresses: []string{r.Addr}, KeyPrefix: "namespace2:"})
	if err := a.Store(ctx, "k", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Load(ctx, "k"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("b.Load of a's key: %v", err)
	}
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "l"); !ok || err != nil {
		t.Fatalf("b.TryLock of a lock under another prefix = %v, %v", ok, err)
	}
	keys, err := r.Client(t).Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	want := []string{"caddy-acme:d:", "caddy-acme:l:l", "caddy-acme:v:k", "namespace2:l:l"}
	if !slices.Equal(keys, want) {
		t.Fatalf("Redis keys = %q, want %q", keys, want)
	}
}

func TestEncryption(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	newKey := func() string {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(b)
	}
	key1, key2 := newKey(), newKey()
	withKey := func(k string) *Storage {
		s := &Storage{Addresses: []string{r.Addr}, KeyPrefix: "enc:"}
		s.EncryptionKey = k
		return provision(t, s)
	}
	s := withKey(key1)
	secret := []byte("-----BEGIN EC PRIVATE KEY-----\nsecret\n-----END EC PRIVATE KEY-----\n")
	if err := s.Store(ctx, "certificates/a/a.key", secret); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(ctx, "certificates/a/a.key"); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Load = %q, %v", got, err)
	}
	if info, err := s.Stat(ctx, "certificates/a/a.key"); err != nil || info.Size != int64(len(secret)) {
		t.Fatalf("Stat = %+v, %v; want the plain size %d", info, err, len(secret))
	}
	raw, err := r.Client(t).HGet(ctx, "enc:v:certificates/a/a.key", "value").Bytes()
	if err != nil || bytes.Contains(raw, []byte("secret")) {
		t.Fatalf("stored value %q (%v) is not encrypted", raw, err)
	}

	_, err = withKey(key2).Load(ctx, "certificates/a/a.key")
	if !errors.Is(err, backend.ErrOpen) || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load with the wrong key: %v, want backend.ErrOpen", err)
	}
	if strings.Contains(err.Error(), key1) || strings.Contains(err.Error(), key2) {
		t.Fatalf("error shows a key: %v", err)
	}
	_, err = provision(t, &Storage{Addresses: []string{r.Addr}, KeyPrefix: "enc:"}).Load(ctx, "certificates/a/a.key")
	if err == nil || !strings.Contains(err.Error(), "value is encrypted: set the storage's encryption_key") {
		t.Fatalf("Load without a key: %v, want the value-is-encrypted error", err)
	}

	// A value copied under another key does not decrypt.
	c := r.Client(t)
	if err := c.Copy(ctx, "enc:v:certificates/a/a.key", "enc:v:certificates/b/b.key", 0, false).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "certificates/b/b.key"); !errors.Is(err, backend.ErrOpen) {
		t.Fatalf("Load of a value moved to another key: %v, want backend.ErrOpen", err)
	}
}

// TestCrashBetweenWrites simulates a Store interrupted after its index
// writes and before its value write (the only partial state a crash can
// leave): List, Stat and Exists do not report the missing key or the
// directories that would only exist through it, and once the stale
// fields are old enough they are pruned.
func TestCrashBetweenWrites(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	s := provision(t, &Storage{Addresses: []string{r.Addr}, KeyPrefix: "crash:"})
	if err := s.Store(ctx, "certificates/ca/live.com/live.com.crt", []byte("crt")); err != nil {
		t.Fatal(err)
	}
	// The crashed Stores: their index fields, no value.
	for _, key := range []string{
		"certificates/ca/ghost.com/ghost.com.crt", // a new directory in a live one
		"certificates/ca/live.com/live.com.key",   // a new file in a live directory
		"ghost/only/key",                          // directories that exist only through it
	} {
		if _, err := s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
			s.addIndex(ctx, p, indexFields(key), time.UnixMilli(1)) // written long ago
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	check := func() {
		t.Helper()
		for dir, want := range map[string][]string{
			"":                         {"certificates"},
			"certificates/ca":          {"certificates/ca/live.com"},
			"certificates/ca/live.com": {"certificates/ca/live.com/live.com.crt"},
		} {
			got, err := s.List(ctx, dir, false)
			slices.Sort(got)
			if err != nil || !slices.Equal(got, want) {
				t.Fatalf("List(%q) = %q, %v; want %q", dir, got, err, want)
			}
		}
		got, err := s.List(ctx, "", true)
		want := []string{"certificates", "certificates/ca", "certificates/ca/live.com", "certificates/ca/live.com/live.com.crt"}
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("List(\"\", true) = %q, %v; want %q", got, err, want)
		}
		for _, k := range []string{"ghost", "ghost/only", "ghost/only/key", "certificates/ca/ghost.com", "certificates/ca/ghost.com/ghost.com.crt", "certificates/ca/live.com/live.com.key"} {
			if _, err := s.Stat(ctx, k); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Stat(%q) = %v, want fs.ErrNotExist", k, err)
			}
			if s.Exists(ctx, k) {
				t.Fatalf("Exists(%q) = true", k)
			}
			if _, err := s.List(ctx, k, true); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("List(%q) = %v, want fs.ErrNotExist", k, err)
			}
		}
		if info, err := s.Stat(ctx, "certificates/ca"); err != nil || info.IsTerminal {
			t.Fatalf("Stat(certificates/ca) = %+v, %v", info, err)
		}
	}
	check()

	// Readers have pruned what they found stale; a few passes remove the
	// chains of directories bottom-up.
	c := r.Client(t)
	for range 4 {
		check()
	}
	for index, want := range map[string][]string{
		"crash:d:":                         {"certificates/"},
		"crash:d:certificates/ca":          {"live.com/"},
		"crash:d:certificates/ca/live.com": {"live.com.crt"},
	} {
		got, err := c.HKeys(ctx, index).Result()
		slices.Sort(got)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("index %s = %q, %v; want %q after pruning", index, got, err, want)
		}
	}
	for _, index := range []string{"crash:d:ghost", "crash:d:ghost/only", "crash:d:certificates/ca/ghost.com"} {
		if n, err := c.Exists(ctx, index).Result(); err != nil || n != 0 {
			t.Fatalf("stale index %s still exists (%d, %v)", index, n, err)
		}
	}
}

// TestRecentFieldsNotPruned checks that a field just written (as by a
// Store between its index and value writes) is not pruned although its
// value is missing, and that the value, once written, is listed.
func TestRecentFieldsNotPruned(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	s := provision(t, &Storage{Addresses: []string{r.Addr}, KeyPrefix: "recent:"})
	if _, err := s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		s.addIndex(ctx, p, indexFields("a/b/c"), time.Now())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Readers and a Delete of a sibling all see the stale-looking fields.
	if s.Exists(ctx, "a") {
		t.Fatal("a exists before its value is written")
	}
	// (the root of an empty storage lists no keys, without error)
	if keys, err := s.List(ctx, "", true); err != nil || len(keys) != 0 {
		t.Fatalf("List = %q, %v; want nothing", keys, err)
	}
	if err := s.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	// The Store now completes.
	if err := s.client.HSet(ctx, s.valueKey("a/b/c"), fieldValue, "v", fieldSize, 1, fieldModified, time.Now().UnixNano()).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := s.List(ctx, "", true)
	if want := []string{"a", "a/b", "a/b/c"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("List = %q, %v; want %q", got, err, want)
	}
}

// TestConcurrentStoreDelete stores and deletes overlapping keys and
// directories from two nodes at once, then checks the invariant the data
// layout keeps: every value that exists is listed, and everything listed
// exists.
func TestConcurrentStoreDelete(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	config := func() *Storage { return &Storage{Addresses: []string{r.Addr}} }
	nodes := []*Storage{open(t, config, "churn"), open(t, config, "churn")}
	keys := []string{"a/b/c", "a/b/d", "a/e", "a/f/g/h", "i", "i/j"}
	dirs := []string{"a", "a/b", "a/f", "i"}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := nodes[w%2]
			for i := range 200 {
				var err error
				switch (i + w) % 3 {
				case 0, 1:
					k := keys[(i*7+w)%len(keys)]
					err = s.Store(ctx, k, []byte(k))
				case 2:
					err = s.Delete(ctx, dirs[(i*5+w)%len(dirs)])
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	listed, err := nodes[0].List(ctx, "", true)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var files []string
	for _, k := range listed {
		info, err := nodes[1].Stat(ctx, k)
		if err != nil {
			t.Fatalf("Stat(%q) of a listed key: %v", k, err)
		}
		if info.IsTerminal {
			files = append(files, k)
		}
	}
	var values []string
	for _, k := range keys {
		if _, err := nodes[1].Load(ctx, k); err == nil {
			values = append(values, k)
		} else if !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
	slices.Sort(values)
	if !slices.Equal(files, values) {
		t.Fatalf("files listed %q, values stored %q", files, values)
	}
}

// TestLockDetails checks what the suite cannot see from outside: leases
// are extended and never shortened, and an Unlock changes nothing unless
// it is the owner's.
func TestLockDetails(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	config := func() *Storage { return &Storage{Addresses: []string{r.Addr}} }
	a, b := open(t, config, "locks"), open(t, config, "locks")
	c := r.Client(t)
	pttl := func() time.Duration {
		t.Helper()
		d, err := c.PTTL(ctx, "locks:l:issue_cert_x").Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if err := a.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	if d := pttl(); d <= 0 || d > testLease {
		t.Fatalf("lease after Lock = %s, want up to %s", d, testLease)
	}
	if err := a.RenewLockLease(ctx, "issue_cert_x", time.Hour); err != nil {
		t.Fatal(err)
	}
	if d := pttl(); d <= testLease {
		t.Fatalf("lease after RenewLockLease(1h) = %s", d)
	}
	token, _ := a.held.Token("issue_cert_x")
	if err := a.refresh(ctx, "issue_cert_x", token); err != nil {
		t.Fatal(err)
	}
	if d := pttl(); d <= testLease {
		t.Fatalf("a refresh shortened the renewed lease to %s", d)
	}

	if err := b.Unlock(ctx, "issue_cert_x"); !errors.Is(err, errNotHeld) {
		t.Fatalf("Unlock by a non-holder: %v, want errNotHeld", err)
	}
	if err := b.RenewLockLease(ctx, "issue_cert_x", time.Minute); !errors.Is(err, errNotHeld) {
		t.Fatalf("RenewLockLease by a non-holder: %v, want errNotHeld", err)
	}
	if got, err := c.Get(ctx, "locks:l:issue_cert_x").Result(); err != nil || got != token {
		t.Fatalf("lock after others' Unlock = %q, %v; want a's token", got, err)
	}

	// a's lease ran out and b took the lock: a's Unlock must not release it.
	if err := c.Del(ctx, "locks:l:issue_cert_x").Err(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "issue_cert_x"); !ok || err != nil {
		t.Fatalf("b.TryLock = %v, %v", ok, err)
	}
	if err := a.Unlock(ctx, "issue_cert_x"); !errors.Is(err, errLost) {
		t.Fatalf("Unlock of a lost lock: %v, want errLost", err)
	}
	bToken, _ := b.held.Token("issue_cert_x")
	if got, err := c.Get(ctx, "locks:l:issue_cert_x").Result(); err != nil || got != bToken {
		t.Fatalf("lock after a's late Unlock = %q, %v; want b's token", got, err)
	}
	if err := b.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Exists(ctx, "locks:l:issue_cert_x").Result(); err != nil || n != 0 {
		t.Fatalf("lock key after Unlock: %d, %v", n, err)
	}
}

// TestLockWakesOnUnlock checks that a waiting Lock is woken by the release
// notification, on a standalone server and on Cluster (where the script's
// PUBLISH runs on the lock's node and the waiter listens on another): the
// lease is an hour and polling is off, so nothing else can wake it before
// its context (a bound against hanging) ends.
func TestLockWakesOnUnlock(t *testing.T) {
	t.Run("standalone", func(t *testing.T) {
		r := testenv.StartRedis(t, testenv.RedisOptions{})
		testLockWakes(t, &Storage{Addresses: []string{r.Addr}}, r.Client(t))
	})
	t.Run("cluster", func(t *testing.T) {
		c := testenv.StartRedisCluster(t)
		testLockWakes(t, &Storage{Addresses: c.Addrs}, c.Client(t))
	})
}

func testLockWakes(t *testing.T, config *Storage, raw goredis.UniversalClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := func() *Storage {
		s := &Storage{Addresses: config.Addresses, KeyPrefix: "wake:"}
		s.LockLease = caddy.Duration(time.Hour)
		provision(t, s)
		s.poll = time.Hour
		return s
	}
	a, b := node(), node()
	if err := a.Lock(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Lock(ctx, "x") }()
	waitSubscribers(t, raw, "wake:unlock:x", 1)
	if err := a.Unlock(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("b.Lock after a.Unlock: %v", err)
	}
	if err := b.Unlock(ctx, "x"); err != nil {
		t.Fatal(err)
	}
}

// waitSubscribers waits until channel has n subscribers.
func waitSubscribers(t *testing.T, c goredis.UniversalClient, channel string, n int64) {
	t.Helper()
	for range 1000 {
		var total int64
		count := func(ctx context.Context, c *goredis.Client) error {
			counts, err := c.PubSubNumSub(ctx, channel).Result()
			total += counts[channel]
			return err
		}
		var err error
		if cc, ok := c.(*goredis.ClusterClient); ok {
			// each node counts its own subscribers
			var mu sync.Mutex
			err = cc.ForEachShard(context.Background(), func(ctx context.Context, c *goredis.Client) error {
				mu.Lock()
				defer mu.Unlock()
				return count(ctx, c)
			})
		} else {
			err = count(context.Background(), c.(*goredis.Client))
		}
		if err != nil {
			t.Fatal(err)
		}
		if total >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s never had %d subscribers", channel, n)
}

// TestManyStaleFields checks a directory whose index holds hundreds of
// stale fields (read page by page with HSCAN) besides one live file: Stat,
// Exists and List find the file, and the stale fields get pruned.
func TestManyStaleFields(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	s := provision(t, &Storage{Addresses: []string{r.Addr}, KeyPrefix: "stale:"})
	c := r.Client(t)
	stale := make([]any, 0, 1200)
	for i := range 600 {
		stale = append(stale, "gone"+strconv.Itoa(i), "1")
	}
	if err := c.HSet(ctx, "stale:d:dir/sub", stale...).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Store(ctx, "dir/sub/live", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if info, err := s.Stat(ctx, "dir"); err != nil || info.IsTerminal {
		t.Fatalf("Stat(dir) = %+v, %v", info, err)
	}
	if !s.Exists(ctx, "dir/sub") {
		t.Fatal("Exists(dir/sub) = false")
	}
	if got, err := s.List(ctx, "dir/sub", false); err != nil || !slices.Equal(got, []string{"dir/sub/live"}) {
		t.Fatalf("List(dir/sub) = %q, %v", got, err)
	}
	if got, err := c.HKeys(ctx, "stale:d:dir/sub").Result(); err != nil || !slices.Equal(got, []string{"live"}) {
		t.Fatalf("index after List = %d fields, %v; want only the live one", len(got), err)
	}
	if err := s.Delete(ctx, "dir/sub/live"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "dir") {
		t.Fatal("Exists(dir) after deleting its only file")
	}
}

// TestUnreachable checks that a Redis that cannot be reached is reported as
// such by every operation, never as a missing key.
func TestUnreachable(t *testing.T) {
	ctx := context.Background()
	port := testenv.FreePort(t) // nothing listens there
	s := provision(t, &Storage{Addresses: []string{"127.0.0.1:" + strconv.Itoa(port)}, DialTimeout: caddy.Duration(time.Second)})
	lockCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ops := map[string]func() error{
		"Store":   func() error { return s.Store(ctx, "a/b", []byte("v")) },
		"Load":    func() error { _, err := s.Load(ctx, "a/b"); return err },
		"Stat":    func() error { _, err := s.Stat(ctx, "a/b"); return err },
		"List":    func() error { _, err := s.List(ctx, "a", false); return err },
		"ListAll": func() error { _, err := s.List(ctx, "", true); return err },
		"Delete":  func() error { return s.Delete(ctx, "a") },
		"Lock":    func() error { return s.Lock(lockCtx, "l") },
		"TryLock": func() error { _, err := s.TryLock(ctx, "l"); return err },
	}
	var wg sync.WaitGroup
	for name, op := range ops {
		wg.Go(func() {
			if err := op(); err == nil || errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s: %v, want a connection error", name, err)
			}
		})
	}
	wg.Wait()
	if s.Exists(ctx, "a/b") {
		t.Error("Exists is true")
	}
}
