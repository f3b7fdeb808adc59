package backend

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

func TestSealer(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	s, err := NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range [][]byte{{}, []byte("hello"), bytes.Repeat([]byte{0xff}, 1<<20)} {
		sealed := s.Seal("certificates/a/a.key", v)
		if len(v) > 0 && bytes.Contains(sealed, v) {
			t.Fatal("sealed value contains the plain value")
		}
		got, err := s.Open("certificates/a/a.key", sealed)
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("Open = %d bytes, %v; want the %d stored", len(got), err, len(v))
		}
	}

	sealed := s.Seal("k", []byte("secret value"))
	other, _ := NewSealer(bytes.Repeat([]byte{8}, 32))
	tampered := slices.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	for name, tc := range map[string]struct {
		s    *Sealer
		key  string
		data []byte
		want string
	}{
		"wrong key":     {other, "k", sealed, "wrong encryption key or tampered value"},
		"tampered":      {s, "k", tampered, "wrong encryption key or tampered value"},
		"moved":         {s, "other/k", sealed, "wrong encryption key or tampered value"},
		"truncated":     {s, "k", sealed[:len(sealMagic)+3], "wrong encryption key or tampered value"},
		"not encrypted": {s, "k", []byte("plain"), "value is not encrypted"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := tc.s.Open(tc.key, tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) || got != nil {
				t.Fatalf("Open = %q, %v; want an error containing %q", got, err, tc.want)
			}
		})
	}

	var none *Sealer
	if got := none.Seal("k", []byte("x")); string(got) != "x" {
		t.Fatal("a nil Sealer changed the value")
	}
	if got, err := none.Open("k", sealed); err == nil || !strings.Contains(err.Error(), "value is encrypted: set the storage's encryption_key") {
		t.Fatalf("reading a sealed value without a key = %q, %v; want a clear error", got, err)
	}
	if s.String() == "" || strings.Contains(s.String(), string(key)) {
		t.Fatal("String shows the key")
	}
}

func TestParseKey(t *testing.T) {
	key := bytes.Repeat([]byte{0xab}, 32)
	for _, in := range []string{
		base64.StdEncoding.EncodeToString(key),
		base64.RawURLEncoding.EncodeToString(key),
		hex.EncodeToString(key),
		" " + base64.StdEncoding.EncodeToString(key) + "\n",
	} {
		got, err := ParseKey(in)
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("ParseKey(%q) = %x, %v", in, got, err)
		}
	}
	for _, in := range []string{"short-SECRET", base64.StdEncoding.EncodeToString([]byte("sixteen byte key")), "zz" + strings.Repeat("0", 62)} {
		_, err := ParseKey(in)
		if err == nil {
			t.Fatalf("ParseKey(%q) succeeded", in)
		}
		if strings.Contains(err.Error(), in) || strings.Contains(err.Error(), "SECRET") {
			t.Fatalf("error %q shows the key", err)
		}
	}
}

func TestOptions(t *testing.T) {
	t.Setenv("BACKEND_TEST_KEY", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)))
	rt, err := Options{}.Provision()
	if err != nil || rt.Sealer != nil || rt.Lease != DefaultLockLease || rt.Refresh != DefaultLockLease/3 {
		t.Fatalf("defaults = %+v, %v", rt, err)
	}
	rt, err = Options{EncryptionKey: "{env.BACKEND_TEST_KEY}", LockLease: caddy.Duration(6 * time.Second)}.Provision()
	if err != nil || rt.Sealer == nil || rt.Refresh != 2*time.Second {
		t.Fatalf("Provision = %+v, %v", rt, err)
	}
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{EncryptionKey: "{env.BACKEND_TEST_UNSET}"}, "encryption_key:"},
		{Options{EncryptionKey: "not-a-key-SECRET"}, "encryption_key: decodes to 12 bytes, want 32"},
		{Options{EncryptionKey: "!!SECRET!!"}, "encryption_key: not base64 or hex"},
		{Options{LockLease: caddy.Duration(-time.Second)}, "lock_lease: must be positive"},
		{Options{LockLease: caddy.Duration(time.Second), LockRefresh: caddy.Duration(2 * time.Second)}, "lock_refresh: must be positive and shorter than lock_lease"},
	} {
		_, err := tc.o.Provision()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("Provision(%+v) = %v, want an error containing %q without the key", tc.o, err, tc.want)
		}
	}
}

func TestOptionsCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		input   string
		known   bool
		want    Options
		wantErr string
	}{
		{"encryption_key {env.KEY}", true, Options{EncryptionKey: "{env.KEY}"}, ""},
		{"lock_lease 10s", true, Options{LockLease: caddy.Duration(10 * time.Second)}, ""},
		{"lock_refresh 3s", true, Options{LockRefresh: caddy.Duration(3 * time.Second)}, ""},
		{"lock_lease soon", true, Options{}, "lock_lease: expected a positive duration"},
		{"lock_lease 0s", true, Options{}, "lock_lease: expected a positive duration"},
		{"lock_lease", true, Options{}, "wrong argument count"},
		{"lock_refresh 1s 2s", true, Options{}, "wrong argument count"},
		// parsed only: Provision refuses it (TestOptions)
		{"lock_lease -1s", true, Options{LockLease: caddy.Duration(-time.Second)}, ""},
		{"encryption_key", true, Options{}, "wrong argument count"},
		{"encryption_key a b", true, Options{}, "wrong argument count"},
		{"addresses x", false, Options{}, ""},
	} {
		d := caddyfile.NewTestDispenser(tc.input)
		d.Next()
		var o Options
		known, err := o.UnmarshalCaddyfile(d)
		if known != tc.known || (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) || (err == nil && o != tc.want) {
			t.Errorf("%q: known=%v err=%v opts=%+v; want known=%v err~%q opts=%+v", tc.input, known, err, o, tc.known, tc.wantErr, tc.want)
		}
	}
}

func TestKeys(t *testing.T) {
	for _, tc := range []struct {
		dir, key string
		under    bool
		child    string
	}{
		{"a", "a/b", true, "a/b"},
		{"a", "a/b/c", true, "a/b"},
		{"a", "ab/c", false, ""},
		{"a", "a", false, ""},
		{"", "a/b", true, "a"},
		{"", "", false, ""},
		{"a/b", "a/b/c/d", true, "a/b/c"},
	} {
		if got := Under(tc.dir, tc.key); got != tc.under {
			t.Errorf("Under(%q, %q) = %v", tc.dir, tc.key, got)
		}
		if got, ok := Child(tc.dir, tc.key); got != tc.child || ok != tc.under {
			t.Errorf("Child(%q, %q) = %q, %v", tc.dir, tc.key, got, ok)
		}
	}
	if got := Parents("a/b/c"); !slices.Equal(got, []string{"a", "a/b"}) {
		t.Errorf("Parents = %q", got)
	}
	if Clean("/a/b/") != "a/b" {
		t.Error("Clean")
	}
}

func TestHeld(t *testing.T) {
	var h Held
	var refreshes atomic.Int32
	h.Add("l", "tok", 5*time.Millisecond, func(ctx context.Context, name, token string) error {
		if name != "l" || token != "tok" {
			return errors.New("wrong lock")
		}
		refreshes.Add(1)
		return nil
	}, zap.NewNop())
	if tok, ok := h.Token("l"); !ok || tok != "tok" {
		t.Fatalf("Token = %q, %v", tok, ok)
	}
	for refreshes.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	if tok, ok := h.Remove("l"); !ok || tok != "tok" {
		t.Fatalf("Remove = %q, %v", tok, ok)
	}
	after := refreshes.Load()
	time.Sleep(20 * time.Millisecond)
	if refreshes.Load() != after {
		t.Fatal("refreshed after Remove")
	}
	if _, ok := h.Remove("l"); ok {
		t.Fatal("removed twice")
	}
	if len(Token()) != 32 || Token() == Token() {
		t.Fatal("tokens are not random 128-bit hex")
	}
}

type closer struct{ closed *atomic.Int32 }

func (c closer) Destruct() error { c.closed.Add(1); return nil }

func TestPool(t *testing.T) {
	p := NewPool[closer]()
	var made, closed atomic.Int32
	newClient := func() (closer, error) { made.Add(1); return closer{&closed}, nil }
	for range 2 {
		if _, err := p.Acquire("redis://x", newClient); err != nil {
			t.Fatal(err)
		}
	}
	if made.Load() != 1 {
		t.Fatalf("made %d clients for one key, want 1", made.Load())
	}
	if err := p.Release("redis://x"); err != nil || closed.Load() != 0 {
		t.Fatalf("closed after the first of two releases: %v", err)
	}
	if err := p.Release("redis://x"); err != nil || closed.Load() != 1 {
		t.Fatalf("not closed after the last release: %v", err)
	}
}

// TestKnownBound: Known holds at most KnownMax keys however many are set,
// keeps the newest, and records no version 0.
func TestKnownBound(t *testing.T) {
	var m Known
	for i := range 3 * KnownMax {
		m.Set(fmt.Sprintf("k%d", i), uint64(i+1))
	}
	if n := m.Len(); n != KnownMax {
		t.Fatalf("%d keys known after %d, want the bound %d", n, 3*KnownMax, KnownMax)
	}
	if v, ok := m.Get(fmt.Sprintf("k%d", 3*KnownMax-1)); !ok || v != uint64(3*KnownMax) {
		t.Fatalf("the newest key: %d, %v", v, ok)
	}
	m.Set("zero", 0)
	if _, ok := m.Get("zero"); ok {
		t.Fatal("version 0 recorded")
	}
	m.Forget("k0")
	m.Forget(fmt.Sprintf("k%d", 3*KnownMax-1))
	if _, ok := m.Get(fmt.Sprintf("k%d", 3*KnownMax-1)); ok {
		t.Fatal("a forgotten key is still known")
	}
}
