package backend

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// keySeeds are certmagic keys and the edges of the key syntax.
var keySeeds = []string{
	"", "/", "//", "a", "a/b", "/a/b/", "a//b", "ab/c", "a/bc", "a/./b", "a/../b", ".", "..", "...",
	"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.crt",
	"acme/ca/users/ops@example.com/ops.json", "locks/issue_cert_*.example.com",
	"é/日本", "a/\xff", "a\x00b", "a b/c\td", "%2F/%2e%2e", "a?b#c",
}

// FuzzKeys checks the key arithmetic against slow reference definitions:
// Clean is canonical and idempotent; Under is component-wise ("a" is above
// "a/b", not "ab/c") and agrees with splitting both keys into components;
// Child returns the child of dir that key is (or lies under); Parents
// returns every directory above key, nearest last; CheckKey accepts exactly
// the keys that survive an HTTP server's path cleaning and a JSON round trip.
func FuzzKeys(f *testing.F) {
	for _, a := range keySeeds {
		for _, b := range []string{"", "a", "a/b/c", a + "/x"} {
			f.Add(a, b)
			f.Add(b, a)
		}
	}
	f.Fuzz(func(t *testing.T, dir, key string) {
		c := Clean(key)
		if strings.HasPrefix(c, "/") || strings.HasSuffix(c, "/") || Clean(c) != c || !strings.Contains(key, c) {
			t.Fatalf("Clean(%q) = %q", key, c)
		}

		// Under, as defined on strings and, on keys without empty
		// components (where components are well defined), against
		// splitting both into components.
		under := Under(dir, key)
		if want := dir == "" && key != "" || dir != "" && strings.HasPrefix(key, dir+"/"); under != want {
			t.Fatalf("Under(%q, %q) = %v, want %v", dir, key, under, want)
		}
		wellFormed := noEmptyComponent(dir) && noEmptyComponent(key)
		if dir != "" && key != "" && wellFormed {
			dc, kc := strings.Split(dir, "/"), strings.Split(key, "/")
			want := len(dc) < len(kc) && slices.Equal(dc, kc[:len(dc)])
			if under != want {
				t.Fatalf("Under(%q, %q) = %v, but its components say %v", dir, key, under, want)
			}
		}

		child, ok := Child(dir, key)
		if ok != under || !ok && child != "" {
			t.Fatalf("Child(%q, %q) = %q, %v; Under = %v", dir, key, child, ok, under)
		}
		if ok && wellFormed {
			rest := child
			if dir != "" {
				rest = child[len(dir)+1:]
			}
			if !Under(dir, child) || rest == "" || strings.Contains(rest, "/") || (child != key && !Under(child, key)) {
				t.Fatalf("Child(%q, %q) = %q: not the direct child above the key", dir, key, child)
			}
		}

		parents := Parents(key)
		var want []string
		for i := range len(key) {
			if key[i] == '/' {
				want = append(want, key[:i])
			}
		}
		if !slices.Equal(parents, want) {
			t.Fatalf("Parents(%q) = %q, want %q", key, parents, want)
		}
		for _, p := range parents {
			if !Under(p, key) {
				t.Fatalf("Parents(%q) has %q, which key is not under", key, p)
			}
		}

		// CheckKey: exactly the clean keys that reach a server unchanged.
		err := CheckKey(c)
		survives := c == "" || path.Clean("/"+c) == "/"+c && utf8.ValidString(c) && jsonRoundTrips(c)
		if (err == nil) != survives {
			t.Fatalf("CheckKey(%q) = %v, but survives path cleaning and JSON: %v", c, err, survives)
		}
		if err != nil && !errors.Is(err, fs.ErrInvalid) {
			t.Fatalf("CheckKey(%q) = %v, not fs.ErrInvalid", c, err)
		}
	})
}

// noEmptyComponent reports whether s is the root or a key whose components
// are all non-empty.
func noEmptyComponent(s string) bool {
	return s == "" || !strings.Contains("/"+s+"/", "//")
}

func jsonRoundTrips(s string) bool {
	b, err := json.Marshal(s)
	if err != nil {
		return false
	}
	var back string
	return json.Unmarshal(b, &back) == nil && back == s
}

// FuzzSealer checks the value envelope: every value round-trips through
// Seal and Open, with and without an encryption key (also values that look
// like sealed ones), and OpenedLen gives its length from the stored length
// and first 20 bytes; a sealed value opens only under the key it was sealed
// for and never contains the plain value; and any bytes read from a backend
// (tampered, truncated, foreign) give a value or an error, never a panic,
// and never open under the encryption key unless they were sealed with it.
func FuzzSealer(f *testing.F) {
	f.Add("k", "other", []byte("value"), []byte("garbage"), uint16(0))
	f.Add("certificates/a/a.key", "certificates/b/b.key", []byte("-----BEGIN EC PRIVATE KEY-----\n"), []byte{}, uint16(30))
	f.Add("", "k", []byte{}, append([]byte(nil), sealMagic...), uint16(1))
	f.Add("k", "k2", append(append([]byte(nil), sealMagic...), "not sealed"...), append(append([]byte(nil), plainMagic...), "x"...), uint16(24))
	f.Add("k", "k2", append(append([]byte(nil), plainMagic...), plainMagic...), append(append([]byte(nil), sealMagic...), make([]byte, 12)...), uint16(40))
	s, err := NewSealer(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, key, other string, value, garbage []byte, flip uint16) {
		var none *Sealer
		stored := none.Seal(key, value)
		if got, err := none.Open(key, stored); err != nil || !bytes.Equal(got, value) {
			t.Fatalf("without a key, %q read back as %q, %v", value, got, err)
		}
		if n := none.OpenedLen(int64(len(stored)), stored[:min(20, len(stored))]); n != int64(len(value)) {
			t.Fatalf("without a key, OpenedLen of %q (stored %q) = %d", value, stored, n)
		}

		sealed := s.Seal(key, value)
		if got, err := s.Open(key, sealed); err != nil || !bytes.Equal(got, value) {
			t.Fatalf("with a key, %q read back as %q, %v", value, got, err)
		}
		if n := s.OpenedLen(int64(len(sealed)), sealed[:20]); n != int64(len(value)) {
			t.Fatalf("with a key, OpenedLen of %d bytes sealed = %d", len(value), n)
		}
		if len(value) >= 16 && bytes.Contains(sealed[len(sealMagic):], value) {
			t.Fatalf("sealed value contains the plain value %q", value)
		}
		if other != key {
			if got, err := s.Open(other, sealed); !errors.Is(err, ErrOpen) || got != nil {
				t.Fatalf("value sealed for %q opened for %q: %q, %v", key, other, got, err)
			}
		}
		tampered := bytes.Clone(sealed)
		tampered[int(flip)%len(tampered)] ^= 1 << (flip % 8)
		if got, err := s.Open(key, tampered); err == nil {
			t.Fatalf("tampered value (bit %d) opened: %q", flip, got)
		}
		if got, err := s.Open(key, sealed[:int(flip)%len(sealed)]); err == nil {
			t.Fatalf("truncated value (%d bytes) opened: %q", int(flip)%len(sealed), got)
		}
		if _, err := none.Open(key, sealed); err == nil {
			t.Fatal("a sealed value opened without a key")
		}

		// Garbage from the backend.
		if got, err := s.Open(key, garbage); err == nil {
			t.Fatalf("garbage %q opened as %q", garbage, got)
		}
		got, err := none.Open(key, garbage)
		switch {
		case bytes.HasPrefix(garbage, sealMagic):
			if err == nil {
				t.Fatalf("a value that looks sealed was returned without a key: %q", got)
			}
		case err != nil || !bytes.HasSuffix(garbage, got):
			t.Fatalf("without a key, stored %q read as %q, %v", garbage, got, err)
		}
	})
}

// parseKeyErr matches every message of ParseKey: fixed text and a length.
var parseKeyErr = regexp.MustCompile(`^(not base64 or hex|decodes to [0-9]+ bytes, want 32) \(generate one with: openssl rand -base64 32\)$`)

// FuzzParseKey checks that any string configured as encryption_key yields
// 32 bytes or an error that never repeats the string (it is a secret).
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"", "x", strings.Repeat("ab", 32), strings.Repeat("A", 43), strings.Repeat("A", 43) + "=",
		strings.Repeat("-", 43), " " + strings.Repeat("/", 44) + "\n", strings.Repeat("zz", 32), strings.Repeat("A", 44),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, err := ParseKey(s)
		if err == nil {
			if len(key) != 32 {
				t.Fatalf("ParseKey(%q) = %d bytes", s, len(key))
			}
			if _, err := NewSealer(key); err != nil {
				t.Fatal(err)
			}
			return
		}
		if msg := err.Error(); !parseKeyErr.MatchString(msg) {
			t.Fatalf("ParseKey(%q) = %q: not one of its fixed messages, so it may show the key", s, msg)
		}
	})
}
