package redis

import (
	"slices"
	"strings"
	"testing"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// codecs are storages with the key prefixes the fuzz targets check: the
// default, none, and one that looks like a key kind.
var codecs = []*Storage{{prefix: DefaultKeyPrefix}, {prefix: ""}, {prefix: "v:"}}

// keySeeds are certmagic keys and the edges of the key syntax (Redis keys
// are binary-safe: only the empty key and empty components are refused).
var keySeeds = []string{
	"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.crt",
	"acme/ca/users/ops@example.com/ops.json", "a", "a/b", "ab", "a/c", "/a/b/", "a//b", "a/./b", "a/../b",
	".", "x/\xff", "d:a", "v:", "l:x", "unlock:x", "a\x00b", "{tag}/x", "é/日本",
}

// FuzzKeys checks how certmagic keys map to Redis keys and index fields.
// A key Store accepts has a value key that decodes back to it; its index
// fields name every directory above it and then the key itself, each
// field decoding (childNode) back to that key in that directory; two
// different keys never share a value key or a file field; and value keys,
// directory indexes, locks and unlock channels never share a Redis key,
// whatever the names.
func FuzzKeys(f *testing.F) {
	for _, k := range keySeeds {
		f.Add(k, "a/b")
		f.Add("a", k)
	}
	f.Fuzz(func(t *testing.T, key, other string) {
		k, o := backend.Clean(key), backend.Clean(other)
		for _, s := range codecs {
			for _, name := range []string{k, o} {
				kinds := map[string]string{
					"value": s.valueKey(name), "index": s.indexKey(name), "lock": s.lockKey(name), "channel": s.channel(name),
				}
				for kind, rk := range kinds {
					for okind, ork := range map[string]string{
						"value": s.valueKey(k), "index": s.indexKey(o), "lock": s.lockKey(o), "channel": s.channel(k),
					} {
						if kind != okind && rk == ork {
							t.Fatalf("prefix %q: the %s key of %q is the %s key %q", s.prefix, kind, name, okind, rk)
						}
					}
				}
			}

			if err := checkKey(k); err != nil {
				if k != "" && !strings.Contains(k, "//") {
					t.Fatalf("checkKey(%q) = %v", k, err)
				}
				continue
			}
			if back, ok := strings.CutPrefix(s.valueKey(k), s.prefix+valueKind); !ok || back != k {
				t.Fatalf("value key %q of %q does not decode back", s.valueKey(k), k)
			}

			fields := indexFields(k)
			want := append(backend.Parents(k), k)
			if len(fields) != len(want) {
				t.Fatalf("indexFields(%q) = %q, want one per level of %q", k, fields, want)
			}
			dir := ""
			for i, f := range fields {
				n := childNode(f.dir, f.field, "1")
				if f.dir != dir || !validField(f.field) || n.key != want[i] || n.dir != (i < len(fields)-1) || n.parent != f.dir {
					t.Fatalf("index field %d of %q: %+v names %+v, want %q", i, k, f, n, want[i])
				}
				dir = n.key
			}
			if d, name := parentOf(k); d != fields[len(fields)-1].dir || name != fields[len(fields)-1].field {
				t.Fatalf("parentOf(%q) = %q, %q; its field is %+v", k, d, name, fields[len(fields)-1])
			}

			if checkKey(o) == nil && o != k {
				if s.valueKey(o) == s.valueKey(k) {
					t.Fatalf("keys %q and %q share the value key %q", k, o, s.valueKey(k))
				}
				fo, fk := indexFields(o), fields
				if fo[len(fo)-1] == fk[len(fk)-1] {
					t.Fatalf("keys %q and %q share the index field %+v", k, o, fk[len(fk)-1])
				}
			}
		}
	})
}

// FuzzIndex checks List's view of the directory indexes against the
// certmagic contract. With values stored at up to three keys, the fields
// of dir's index name exactly the direct children of dir that some stored
// key is or lies under (as a file, a directory or both), and walking the
// indexes down from dir, as List(recursive) and Delete do, reaches exactly
// the stored keys below dir and the directories between; a key outside dir
// never shows. A field that the storage did not write (damaged, or another
// program's, in any index) is skipped or names a proper child: the walk
// always ends, and only ever reaches keys below dir.
func FuzzIndex(f *testing.F) {
	for _, k := range keySeeds {
		f.Add("", "a/b", "a/c/x", "ab", k)
		f.Add("a", k, "a/b", "b", "/")
	}
	f.Add("", "a", "", "", "")
	f.Add("a", "a/b", "", "", "b//")
	f.Fuzz(func(t *testing.T, dir, a, b, c, garbage string) {
		d := backend.Clean(dir)
		if strings.Contains(d, "//") {
			return
		}
		var stored []string
		index := map[string]map[string]bool{} // directory → fields
		for _, key := range []string{a, b, c} {
			k := backend.Clean(key)
			if checkKey(k) != nil {
				continue
			}
			stored = append(stored, k)
			for _, f := range indexFields(k) {
				if index[f.dir] == nil {
					index[f.dir] = map[string]bool{}
				}
				index[f.dir][f.field] = true
			}
		}

		// dir's own index: its children.
		var children []string
		for field := range index[d] {
			if validField(field) {
				children = append(children, childNode(d, field, "1").key)
			}
		}
		slices.Sort(children)
		children = slices.Compact(children)
		if want := backend.ListReference(d, stored, false); !slices.Equal(children, want) {
			t.Fatalf("index of %q over %q names %q, want %q", d, stored, children, want)
		}
		if got, want := walk(t, index, d), backend.ListReference(d, stored, true); !slices.Equal(got, want) {
			t.Fatalf("walking the indexes from %q over %q reaches %q, want %q", d, stored, got, want)
		}

		// Garbage in every index on the way, and in dir's.
		for _, p := range append(backend.Parents(d), "", d) {
			if index[p] == nil {
				index[p] = map[string]bool{}
			}
			index[p][garbage] = true
		}
		got := walk(t, index, d)
		for _, k := range backend.ListReference(d, stored, true) {
			if !slices.Contains(got, k) {
				t.Fatalf("with field %q, walking from %q lost %q: %q", garbage, d, k, got)
			}
		}
	})
}

// walk follows the directory fields of the indexes from dir, as
// List(recursive) and Delete do, and returns the keys it reaches, failing
// if a key is not a direct child of the directory whose index names it, or
// if the walk does not end.
func walk(t *testing.T, index map[string]map[string]bool, dir string) []string {
	t.Helper()
	var keys []string
	level := []string{dir}
	for steps := 0; len(level) > 0; steps++ {
		if steps > 64 {
			t.Fatalf("walking the indexes from %q does not end: %q", dir, level)
		}
		var next []string
		for _, d := range level {
			for field := range index[d] {
				if !validField(field) {
					continue
				}
				n := childNode(d, field, "1")
				if c, ok := backend.Child(d, n.key); !ok || c != n.key {
					t.Fatalf("field %q of the index of %q names %q, not a direct child", field, d, n.key)
				}
				keys = append(keys, n.key)
				if n.dir {
					next = append(next, n.key)
				}
			}
		}
		level = next
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}
