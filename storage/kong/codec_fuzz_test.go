package kong

import (
	"bytes"
	"slices"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// keySeeds are certmagic keys and the edges of the key syntax.
var keySeeds = []string{
	"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.crt",
	"acme/ca/users/ops@example.com/ops.json", "a", "a/b", "ab", "a/c", "a-b", "a.b", "a!", "/a/b/",
	"a//b", "a/./b", "a/../b", "é/日本", "a\x00b", "a/\xff", "locks/x", "0", "a0", "a/0",
}

// rowPrefix is key_prefix as Provision makes it, and whether Provision
// accepts it.
func rowPrefix(p string) (string, bool) {
	if p == "" {
		p = DefaultKeyPrefix
	}
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p, !strings.HasPrefix(p, kongNamespace) && validText(p)
}

// inRange reports whether row lies in [lo, hi) in byte order, as the
// queries' `key COLLATE "C" >= lo AND key COLLATE "C" < hi`.
func inRange(row, lo, hi string) bool { return row >= lo && row < hi }

// FuzzKeys checks how certmagic keys and lock names map to rows of
// acme_storage. cleanKey is canonical and idempotent and refuses exactly
// what a TEXT column cannot hold; a key's row decodes back to it; two
// different keys never share a row; the byte range of a directory ([lo,
// succ(lo)), what List, Stat, Exists and Delete query) holds the rows of
// exactly the keys below it, and Delete(k) removes exactly k and the keys
// below it; lock rows lie in the range Delete("") spares and never among
// the keys of a directory, and neither do Kong's own rows.
func FuzzKeys(f *testing.F) {
	for _, k := range keySeeds {
		f.Add(k, "a", "issue_cert_example.com", "")
		f.Add("a", k, k, "kong/acme")
	}
	f.Add("a", "", "x", "/")
	f.Add("a", "", "x", "kong_acme:")
	f.Fuzz(func(t *testing.T, key, other, lock, prefix string) {
		p, ok := rowPrefix(prefix)
		if !ok {
			return
		}
		k, err := cleanKey(key)
		if err != nil {
			if validText(key) {
				t.Fatalf("cleanKey(%q) = %v", key, err)
			}
			return
		}
		if !validText(k) || backend.Clean(k) != k || strings.Contains(k, "//") {
			t.Fatalf("cleanKey(%q) = %q: not canonical", key, k)
		}
		if again, err := cleanKey(k); err != nil || again != k {
			t.Fatalf("cleanKey(%q) = %q, then %q, %v", key, k, again, err)
		}
		if k == "" {
			return // the root: no row
		}
		row := p + k
		if back, ok := strings.CutPrefix(row, p); !ok || back != k {
			t.Fatalf("row %q of %q does not decode back", row, k)
		}
		locks := p + "/"
		lockRow := p + "/locks/" + lock
		if inRange(row, locks, succ(locks)) || !inRange(lockRow, locks, succ(locks)) || lockRow == row {
			t.Fatalf("prefix %q: key %q (row %q) and lock %q (row %q) are not apart", p, k, row, lock, lockRow)
		}
		kongRow := kongNamespace + "cert_key:" + other
		if inRange(kongRow, p, succ(p)) {
			t.Fatalf("Kong's row %q lies among the keys of prefix %q", kongRow, p)
		}

		o, err := cleanKey(other)
		if err != nil {
			return
		}
		if o != k && p+o == row {
			t.Fatalf("keys %q and %q share the row %q", k, o, row)
		}
		// o as a directory: its range holds k exactly when k is below o.
		lo := p
		if o != "" {
			lo += o + "/"
		}
		if got, want := inRange(row, lo, succ(lo)), backend.Under(o, k); got != want {
			t.Fatalf("row %q in the range of directory %q [%q, %q): %v, but %q under %q: %v", row, o, lo, succ(lo), got, k, o, want)
		}
		if inRange(lockRow, lo, succ(lo)) && o != "" {
			t.Fatalf("lock row %q lies in the range of directory %q", lockRow, o)
		}
		if o != "" {
			dr := p + o
			if got, want := row == dr || inRange(row, dr+"/", dr+"0"), k == o || backend.Under(o, k); got != want {
				t.Fatalf("Delete(%q) removes the row of %q: %v, want %v", o, k, got, want)
			}
		}
	})
}

// skipScan is sqlList in Go: from each row found, the next row is the
// first one after it if it is a file child of the directory (rest has no
// "/"), else the first one past its child's subtree.
func skipScan(rows []string, lo, hi string) []string {
	next := func(bound string) (string, bool) {
		i := sort.SearchStrings(rows, bound)
		if i < len(rows) && rows[i] < hi {
			return rows[i], true
		}
		return "", false
	}
	var out []string
	for cur, ok := next(lo); ok; {
		out = append(out, cur)
		rest := cur[len(lo):]
		if i := strings.IndexByte(rest, '/'); i < 0 {
			cur, ok = next(cur + "\x01")
		} else {
			cur, ok = next(lo + rest[:i] + "0")
		}
	}
	return out
}

// FuzzList checks List over the table's rows against the certmagic
// contract. With values stored at up to three keys (beside their locks
// and Kong's own rows), the rows the List queries return (the skip scan
// for one level, the range for recursive) give exactly the direct children
// of dir that some stored key is or lies under, or every stored key below
// dir and the directories between. A row another program wrote under
// key_prefix adds at most directories above it (and itself, when it is a
// canonical key), and never hides a stored key.
func FuzzList(f *testing.F) {
	for _, k := range keySeeds {
		f.Add("", "a/b", "a/c/x", "ab", k, false)
		f.Add("a", k, "a/b", "a-b", "a//b", true)
	}
	f.Add("", "a/b", "", "", "/locks/x", false)
	f.Add("", "c/y", "", "", "c//x", false)
	f.Add("a", "a/b", "", "", "a/", true)
	f.Fuzz(func(t *testing.T, dir, a, b, c, foreign string, recursive bool) {
		d, err := cleanKey(dir)
		if err != nil {
			return
		}
		for _, p := range []string{DefaultKeyPrefix, "kong/acme/"} {
			var stored, rows []string
			for _, key := range []string{a, b, c} {
				if k, err := cleanKey(key); err == nil && k != "" {
					stored = append(stored, k)
					rows = append(rows, p+k, p+"/locks/"+k, kongNamespace+"cert_key:"+k)
				}
			}
			want := backend.ListReference(d, stored, recursive)
			if got := list(p, d, rows, recursive); !slices.Equal(got, want) {
				t.Fatalf("List(%q, %v) over %q = %q, want %q", d, recursive, stored, got, want)
			}

			if !validText(foreign) {
				continue
			}
			got := list(p, d, append(rows, p+foreign), recursive)
			for _, k := range want {
				if !slices.Contains(got, k) {
					t.Fatalf("row %q hides %q from List(%q, %v): %q", p+foreign, k, d, recursive, got)
				}
			}
			for _, k := range got {
				if slices.Contains(want, k) {
					continue
				}
				if ck, err := cleanKey(k); err != nil || ck != k || !backend.Under(d, k) || k != foreign && !backend.Under(k, foreign) {
					t.Fatalf("row %q adds %q to List(%q, %v)", p+foreign, k, d, recursive)
				}
				if c, _ := backend.Child(d, k); !recursive && c != k {
					t.Fatalf("row %q adds %q to List(%q), not a direct child", p+foreign, k, d)
				}
			}
		}
	})
}

// list runs List's queries over the rows, in Go.
func list(prefix, d string, rows []string, recursive bool) []string {
	slices.Sort(rows)
	rows = slices.Compact(rows)
	lo := prefix
	if d != "" {
		lo += d + "/"
	}
	var found []string
	if recursive {
		for _, r := range rows {
			if inRange(r, lo, succ(lo)) {
				found = append(found, r)
			}
		}
	} else {
		found = skipScan(rows, lo, succ(lo))
	}
	l := newLister(d, lo, recursive)
	for _, r := range found {
		l.add(r)
	}
	slices.Sort(l.keys)
	return l.keys
}

// FuzzValues checks the value column: every value encodes to text a TEXT
// column holds (UTF-8 without NUL), decodes back, and has the length and
// the first bytes Stat computes from the text; text is kept as it is; and any text read from
// the table (Kong's rows, damaged ones) decodes to bytes or an error,
// never a panic.
func FuzzValues(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), false, []byte(marker+"AAAA"))
	f.Add([]byte("a\x00b"), false, []byte(marker+"!!"))
	f.Add([]byte(marker), false, []byte(marker+"QQ\n=="))
	f.Add([]byte{}, true, []byte(marker))
	f.Add([]byte("\xff\xfe"), false, []byte("\x01b64"))
	f.Fuzz(func(t *testing.T, value []byte, force bool, text []byte) {
		enc := encodeValue(value, force)
		if !utf8.Valid(enc) || bytes.IndexByte(enc, 0) >= 0 {
			t.Fatalf("value %q encodes to %q, which a TEXT column cannot hold", value, enc)
		}
		encoded := bytes.HasPrefix(enc, []byte(marker))
		if !encoded && (force || !bytes.Equal(enc, value)) {
			t.Fatalf("value %q (force %v) encodes to %q", value, force, enc)
		}
		if back, err := decodeValue(bytes.Clone(enc)); err != nil || !bytes.Equal(back, value) {
			t.Fatalf("value %q (force %v) reads back as %q, %v", value, force, back, err)
		}
		if n := decodedLen(int64(len(enc)), encoded); n != int64(len(value)) {
			t.Fatalf("value of %d bytes: Stat computes %d from %q", len(value), n, enc)
		}
		// Stat reads the first 33 characters (of an encoded value: ASCII)
		head := decodedHead(enc[:min(33, len(enc))])
		if !bytes.HasPrefix(value, head) || len(head) < min(20, len(value)) {
			t.Fatalf("value %q: Stat's head %q is not its first 20 bytes or more", value, head)
		}

		got, err := decodeValue(bytes.Clone(text))
		if !bytes.HasPrefix(text, []byte(marker)) && (err != nil || !bytes.Equal(got, text)) {
			t.Fatalf("text %q reads as %q, %v", text, got, err)
		}
	})
}
