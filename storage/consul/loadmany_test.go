package consul

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// requestCounter is an http.RoundTripper that counts the requests to Consul
// by kind: transactions, KV reads of one key, KV listings.
type requestCounter struct {
	base http.RoundTripper

	mu                sync.Mutex
	txns, gets, lists int
}

func (c *requestCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	switch {
	case req.URL.Path == "/v1/txn":
		c.txns++
	case strings.HasPrefix(req.URL.Path, "/v1/kv/") && req.URL.Query().Has("recurse"):
		c.lists++
	case strings.HasPrefix(req.URL.Path, "/v1/kv/"):
		c.gets++
	}
	c.mu.Unlock()
	return c.base.RoundTrip(req)
}

func (c *requestCounter) counts() (txns, gets, lists int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.txns, c.gets, c.lists
}

// countRequests makes s send its requests through a fresh client (same
// address and token) that counts them.
func countRequests(t testing.TB, s *Storage) *requestCounter {
	t.Helper()
	rc := &requestCounter{base: &http.Transport{}}
	client, err := api.NewClient(&api.Config{Address: s.conn.address, Token: s.conn.token, HttpClient: &http.Client{Transport: rc}})
	if err != nil {
		t.Fatal(err)
	}
	s.client = client
	return rc
}

// sameAsLoad checks that LoadMany's answer for each key is exactly Load's:
// the same bytes (empty but not nil where Load's is), the same error text.
func sameAsLoad(t *testing.T, s *Storage, keys []string, values [][]byte, errs []error) {
	t.Helper()
	if len(values) != len(keys) || len(errs) != len(keys) {
		t.Fatalf("LoadMany of %d keys returned %d values and %d errors", len(keys), len(values), len(errs))
	}
	for i, key := range keys {
		want, wantErr := s.Load(t.Context(), key)
		switch {
		case wantErr != nil:
			if errs[i] == nil || errs[i].Error() != wantErr.Error() || values[i] != nil {
				t.Errorf("LoadMany %q = %d bytes, %v; Load: %v", key, len(values[i]), errs[i], wantErr)
			}
		case errs[i] != nil:
			t.Errorf("LoadMany %q: %v; Load gives %d bytes", key, errs[i], len(want))
		case !bytes.Equal(values[i], want) || (values[i] == nil) != (want == nil):
			t.Errorf("LoadMany %q = %d bytes (nil: %v), Load = %d bytes (nil: %v)", key, len(values[i]), values[i] == nil, len(want), want == nil)
		}
	}
}

// TestLoadMany covers what the conformance suite does not: more keys than
// one transaction holds, a chunked value among them, keys that need
// escaping, invalid and repeated keys, and encryption.
func TestLoadMany(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	for _, enc := range []bool{false, true} {
		name, cfg := "plain", Storage{Address: c.Addr}
		if enc {
			name, cfg.EncryptionKey = "encrypted", testKey(t)
		}
		t.Run(name, func(t *testing.T) {
			s := newStorage(t, cfg)
			ctx := t.Context()
			big := make([]byte, 600<<10)
			if _, err := rand.Read(big); err != nil {
				t.Fatal(err)
			}
			var keys []string
			for i := range 200 {
				key := fmt.Sprintf("certs/site%03d/site%03d.crt", i, i)
				keys = append(keys, key)
				var err error
				switch {
				case i%10 == 3: // missing
				case i == 17:
					err = s.Store(ctx, key, []byte{})
				case i == 101:
					err = s.Store(ctx, key, big)
				default:
					err = s.Store(ctx, key, fmt.Appendf(nil, "certificate %d %s", i, strings.Repeat("x", i)))
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			for _, key := range []string{"odd/sp ace", "odd/per%25cent", "odd/q?x=1#f", "odd/ünïcode", `odd/"quote"\`, "odd/<&>"} {
				keys = append(keys, key)
				if err := s.Store(ctx, key, []byte(key)); err != nil {
					t.Fatal(err)
				}
			}
			keys = append(keys,
				"bad/../key", "", "/", "bad\xff", // invalid
				keys[0], "/"+keys[101]+"/", keys[17], // repeated (as written, and unclean)
				"certs", "certs/site000", // directories
			)
			rc := countRequests(t, s)
			values, errs := s.LoadMany(ctx, keys)
			txns, gets, lists := rc.counts()
			// 200 + 6 + 2 distinct valid keys: 4 transactions, and one
			// listing for the chunks of the large value.
			if txns != 4 || gets != 0 || lists != 1 {
				t.Errorf("LoadMany sent %d transactions, %d gets, %d listings; want 4, 0, 1", txns, gets, lists)
			}
			sameAsLoad(t, s, keys, values, errs)
			if !bytes.Equal(values[101], big) {
				t.Errorf("the chunked value: %d bytes, %v", len(values[101]), errs[101])
			}
			if values[17] == nil || len(values[17]) != 0 {
				t.Errorf("the empty value = %#v, %v; want []byte{}", values[17], errs[17])
			}
			for i, key := range keys[206:210] {
				// "bad/../key" and "bad\xff" would not reach Consul as
				// they are; "" and "/" are the root, which holds no value.
				if err := errs[206+i]; err == nil || errors.Is(err, fs.ErrNotExist) ||
					(strings.HasPrefix(key, "bad") && !errors.Is(err, fs.ErrInvalid)) {
					t.Errorf("invalid key %q: %v", key, err)
				}
			}
			if &values[0][0] == &values[210][0] || &values[101][0] == &values[211][0] {
				t.Error("a repeated key's value shares its memory with the first one's")
			}
			for i := range 200 {
				if i%10 == 3 && !errors.Is(errs[i], fs.ErrNotExist) {
					t.Errorf("missing key %s: %v, want fs.ErrNotExist", keys[i], errs[i])
				}
			}
		})
	}
}

// TestLoadManyCancelled checks that a cancelled context fails every key at
// once, without a request and without hiding invalid keys' own errors.
func TestLoadManyCancelled(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t, testenv.ConsulOptions{})
	s := newStorage(t, Storage{Address: c.Addr})
	keys := []string{"bad/../key"}
	for i := range 200 {
		key := fmt.Sprintf("k/%d", i)
		if err := s.Store(t.Context(), key, []byte("v")); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key)
	}
	rc := countRequests(t, s)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	values, errs := s.LoadMany(ctx, keys)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("LoadMany with a cancelled context took %s", d)
	}
	if !errors.Is(errs[0], fs.ErrInvalid) {
		t.Errorf("invalid key: %v, want fs.ErrInvalid", errs[0])
	}
	for i, key := range keys[1:] {
		err := errs[i+1]
		if values[i+1] != nil || !errors.Is(err, context.Canceled) || errors.Is(err, fs.ErrNotExist) ||
			!strings.HasPrefix(err.Error(), "loading "+key+": ") {
			t.Fatalf("LoadMany %s with a cancelled context = %q, %v", key, values[i+1], err)
		}
	}
	if txns, gets, lists := rc.counts(); txns+gets+lists != 0 {
		t.Errorf("LoadMany with a cancelled context sent %d requests", txns+gets+lists)
	}
}

// TestLoadManyTimeout checks that each transaction is limited by the
// storage's timeout, and that its failure is every key's, named.
func TestLoadManyTimeout(t *testing.T) {
	t.Parallel()
	// A "Consul" that accepts connections and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		conns.Wait()
	})
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	conns.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				<-done
				conn.Close()
			})
		}
	})
	s := newStorage(t, Storage{Address: ln.Addr().String(), Timeout: caddy.Duration(300 * time.Millisecond)})
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("k/%d", i)
	}
	start := time.Now()
	_, errs := s.LoadMany(t.Context(), keys)
	// 4 transactions, all in flight at once.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("LoadMany against a silent server took %s, want about the 300ms timeout", d)
	}
	for i, key := range keys {
		err := errs[i]
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "loading "+key+": consul: ") {
			t.Fatalf("LoadMany %s against a silent server: %v", key, err)
		}
	}
}

// TestLoadManyACL checks that keys the token may not read are reported as
// Load reports them (denied, never missing), although Consul leaves them
// out of a transaction's results without an error, and that a token
// Consul refuses fails every key the same way.
func TestLoadManyACL(t *testing.T) {
	t.Parallel()
	root := "root-" + backend.Token()
	c := testenv.StartConsul(t, testenv.ConsulOptions{ACLToken: root})
	ctx := t.Context()
	good := newStorage(t, Storage{Address: c.Addr, Token: root, KeyPrefix: "lm"})
	for _, k := range []string{"a", "hidden/x", "b"} {
		if err := good.Store(ctx, k, []byte("value of "+k)); err != nil {
			t.Fatal(err)
		}
	}
	admin := rawClient(t, c, root)
	limited := policyToken(t, admin, "lm", `key_prefix "lm" { policy = "write" } key_prefix "lm/hidden" { policy = "deny" }`)
	s := newStorage(t, Storage{Address: c.Addr, Token: limited, KeyPrefix: "lm"})
	keys := []string{"a", "hidden/x", "missing", "hidden/missing", "b"}
	rc := countRequests(t, s)
	values, errs := s.LoadMany(ctx, keys)
	// One transaction, whose results leave the two hidden keys out; each
	// is then read with Load, for its error.
	if txns, gets, lists := rc.counts(); txns != 1 || gets != 2 || lists != 0 {
		t.Errorf("LoadMany sent %d transactions, %d gets, %d listings; want 1, 2, 0", txns, gets, lists)
	}
	sameAsLoad(t, s, keys, values, errs)
	if string(values[0]) != "value of a" || string(values[4]) != "value of b" || !errors.Is(errs[2], fs.ErrNotExist) {
		t.Errorf("readable keys: %q, %q, %v", values[0], values[4], errs[2])
	}
	for _, i := range []int{1, 3} {
		if errs[i] == nil || errors.Is(errs[i], fs.ErrNotExist) || !strings.Contains(errs[i].Error(), "consul denied access") {
			t.Errorf("hidden key %s: %v, want access denied", keys[i], errs[i])
		}
	}

	wrong := newStorage(t, Storage{Address: c.Addr, Token: "00000000-0000-0000-0000-000000000000", KeyPrefix: "lm"})
	values, errs = wrong.LoadMany(ctx, keys)
	for i, key := range keys {
		if values[i] != nil || errs[i] == nil || errors.Is(errs[i], fs.ErrNotExist) ||
			!strings.HasPrefix(errs[i].Error(), "loading "+key+": consul denied access") {
			t.Errorf("LoadMany %s with an unknown token: %v", key, errs[i])
		}
	}
}
