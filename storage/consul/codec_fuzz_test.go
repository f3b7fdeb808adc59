package consul

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// codecs are storages with the key layouts the fuzz targets check: the
// default key_prefix and a nested, Kong-style one.
var codecs = []*Storage{{prefix: defaultKeyPrefix}, {prefix: "kong/acme"}}

// keySeeds are certmagic keys and the edges of the key syntax, among them
// the ones Consul's HTTP server or JSON would change.
var keySeeds = []string{
	"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.crt",
	"acme/ca/users/ops@example.com/ops.json", "a", "a/b", "ab", "a/c", "/a/b/",
	"x/a/../plain", "x/a/./b", "x//y", "x/.", "x/..", "x/\xff", "x/%41", "x/q?q", "x/h#h", "x/ sp ",
	"x/é", "x/%2F", "k", "ka/kb", "c", "a/c/x", "issue_cert_*.example.com",
}

// serverPath is the path Consul's HTTP server (a Go http.ServeMux) serves
// for a request path: cleaned, keeping a trailing slash; other paths are
// answered with a redirect to it.
func serverPath(p string) string {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

// reachesAsIs reports whether a Consul key is used as it is, both in a
// request path and in JSON (transactions, listings).
func reachesAsIs(key string) bool {
	p := "/v1/kv/" + key
	b, err := json.Marshal(key)
	var back string
	return serverPath(p) == p && err == nil && json.Unmarshal(b, &back) == nil && back == key
}

// FuzzKeys checks how certmagic keys and lock names map to Consul keys. A
// key the storage accepts reaches Consul unchanged (the HTTP server cleans
// request paths, JSON replaces bytes that are not UTF-8) and decodes back;
// two different keys never share a Consul key; a directory's prefix covers
// exactly the keys below it; a key's own chunks never lie among another
// key's or among the values, and a key's chunk directory holds the chunks
// of exactly the keys at or below it (what Delete removes); a lock never
// shares a key with a value or a chunk. Rejected keys are fs.ErrInvalid.
func FuzzKeys(f *testing.F) {
	for _, k := range keySeeds {
		f.Add(k, "a/b", "issue_cert_example.com")
		f.Add("a", k, k)
	}
	f.Fuzz(func(t *testing.T, key, other, lock string) {
		for _, s := range codecs {
			k, err := fileKey(key)
			if err != nil {
				if c := backend.Clean(key); c != "" && !errors.Is(err, fs.ErrInvalid) {
					t.Fatalf("fileKey(%q) = %v, not fs.ErrInvalid", key, err)
				}
				if _, err := dirKey(key); err == nil && backend.Clean(key) != "" {
					t.Fatalf("dirKey accepts %q, fileKey does not", key)
				}
				continue
			}
			data := s.dataKey(k)
			if back, ok := strings.CutPrefix(data, s.prefix+"/"); !ok || back != k || !reachesAsIs(data) {
				t.Fatalf("key %q is Consul key %q: does not decode back or is changed on the way", k, data)
			}
			if d := s.dirKey(k); !strings.HasSuffix(d, "/") || !reachesAsIs(d) {
				t.Fatalf("directory %q is Consul prefix %q", k, d)
			}
			if !strings.HasPrefix(data, s.dirKey("")) {
				t.Fatalf("key %q (%q) is not below the root %q", k, data, s.dirKey(""))
			}
			gen, i := newGen(), len(k)%maxChunks
			chunk := s.chunkKey(k, gen, i)
			rest, ok := strings.CutPrefix(chunk, s.ownChunks(k))
			if !ok || !strings.HasPrefix(s.ownChunks(k), s.chunkDir(k)) || strings.HasPrefix(chunk, s.dirKey("")) || !reachesAsIs(chunk) {
				t.Fatalf("chunk %d of %q is %q", i, k, chunk)
			}
			if g, n, _ := strings.Cut(rest, "."); g != gen || n != fmt.Sprintf("%04d", i) {
				t.Fatalf("chunk key %q does not decode to generation %q and chunk %d", chunk, gen, i)
			}

			if o, err := fileKey(other); err == nil {
				od := s.dataKey(o)
				if o != k && od == data {
					t.Fatalf("keys %q and %q are both Consul key %q", k, o, data)
				}
				if got, want := strings.HasPrefix(od, s.dirKey(k)), backend.Under(k, o); got != want {
					t.Fatalf("%q below directory prefix %q: %v, but under %q: %v", od, s.dirKey(k), got, k, want)
				}
				if o != k && strings.HasPrefix(s.ownChunks(o), s.ownChunks(k)) {
					t.Fatalf("the chunks of %q (%q) lie among those of %q (%q)", o, s.ownChunks(o), k, s.ownChunks(k))
				}
				if got, want := strings.HasPrefix(s.chunkKey(o, gen, 0), s.chunkDir(k)), o == k || backend.Under(k, o); got != want {
					t.Fatalf("Delete(%q) removes the chunks of %q: %v, want %v", k, o, got, want)
				}
			}

			if err := checkLockName(lock); err != nil {
				if !errors.Is(err, fs.ErrInvalid) {
					t.Fatalf("checkLockName(%q) = %v, not fs.ErrInvalid", lock, err)
				}
				continue
			}
			lk := s.lockKey(lock)
			if !reachesAsIs(lk) || lk == data || strings.HasPrefix(lk, s.dirKey("")) || strings.HasPrefix(lk, s.chunkDir(k)) {
				t.Fatalf("lock %q is Consul key %q, among the values or chunks", lock, lk)
			}
			if other != lock && checkLockName(other) == nil && s.lockKey(other) == lk {
				t.Fatalf("locks %q and %q are both %q", lock, other, lk)
			}
		}
	})
}

// consulKeys is Consul's `GET /v1/kv/<prefix>?keys&separator=<sep>` over
// the keys kv: every key under prefix, cut after the first separator past
// the prefix, once each.
func consulKeys(kv []string, prefix, sep string) []string {
	var out []string
	for _, k := range kv {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		if i := strings.Index(k[len(prefix):], sep); sep != "" && i >= 0 {
			k = k[:len(prefix)+i+len(sep)]
		}
		out = append(out, k)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// FuzzList checks what List makes of what Consul lists, against the
// certmagic contract: for values stored at up to three keys (with their
// chunks, a lock and a foreign key in the same KV tree), List(dir) reports
// exactly the direct children of dir that some stored key lies at or
// under, and List(dir, recursive) every stored key below dir and the
// directories between; a key outside dir never shows. A foreign Consul key
// (anything another program wrote) adds at most itself and the
// directories above it, and never a key the storage would refuse.
func FuzzList(f *testing.F) {
	for _, k := range keySeeds {
		f.Add("", "a/b", "a/c/x", "ab", k, false)
		f.Add("a", k, "a/b", "b", "a//b", true)
	}
	f.Add("x", "x/y", "", "", "x/a/../y", false)
	f.Add("", "a", "", "", "/", true)
	f.Fuzz(func(t *testing.T, dir, a, b, c, foreign string, recursive bool) {
		d, err := dirKey(dir)
		if err != nil {
			return
		}
		for _, s := range codecs {
			var stored, kv []string
			for _, key := range []string{a, b, c} {
				if k, err := fileKey(key); err == nil {
					stored = append(stored, k)
					kv = append(kv, s.dataKey(k), s.chunkKey(k, "1-ab", 0), s.lockKey(k))
				}
			}
			want := backend.ListReference(d, stored, recursive)
			base, sep := s.dirKey(d), "/"
			if recursive {
				sep = ""
			}
			got := listKeys(d, children(consulKeys(kv, base, sep), base), recursive)
			if !slices.Equal(got, want) {
				t.Fatalf("List(%q, %v) over %q = %q, want %q", d, recursive, stored, got, want)
			}

			// A foreign key, under the values.
			kv = append(kv, s.prefix+"/"+foreign)
			got = listKeys(d, children(consulKeys(kv, base, sep), base), recursive)
			fk := strings.TrimSuffix(foreign, "/")
			for _, k := range got {
				if !backend.Under(d, k) || checkKey(k) != nil {
					t.Fatalf("List(%q, %v) with foreign key %q returned %q", d, recursive, foreign, k)
				}
				if !slices.Contains(want, k) && k != fk && !backend.Under(k, fk) {
					t.Fatalf("List(%q, %v) with foreign key %q returned %q, which is not above it", d, recursive, foreign, k)
				}
				if c, _ := backend.Child(d, k); !recursive && c != k {
					t.Fatalf("List(%q) returned %q, not a direct child", d, k)
				}
			}
			for _, k := range want {
				if !slices.Contains(got, k) {
					t.Fatalf("List(%q, %v) lost %q to foreign key %q: %q", d, recursive, k, foreign, got)
				}
			}
		}
	})
}

// FuzzManifest checks the manifest read from Consul in place of a chunked
// value: what parseManifest accepts re-encodes to itself and stays within
// what Load may allocate and list (at most maxChunks chunks, a size they
// can hold, chunk keys inside the key's own chunks); anything else (a
// damaged value, a foreign one with the chunked flag set) is an error,
// never a panic. Flags and generation names of any value give a time or
// zero.
func FuzzManifest(f *testing.F) {
	f.Add([]byte(manifest{gen: newGen(), chunks: 3, size: 700000, plain: 699000}.String()), uint64(flagChunked|1000))
	f.Add([]byte(manifestMagic+" 1-a 1 9223372036854775807 0"), uint64(0))
	f.Add([]byte(manifestMagic+" 1-a 120 31457280 31457280"), uint64(1<<62))
	f.Add([]byte(manifestMagic+" ../x 1 10 10"), ^uint64(0))
	f.Add([]byte(manifestMagic+" 1-a 0 0 0"), uint64(1))
	f.Add([]byte(""), uint64(0))
	f.Fuzz(func(t *testing.T, data []byte, flags uint64) {
		flagsTime(flags)
		m, err := parseManifest(data)
		if err != nil {
			if m != (manifest{}) {
				t.Fatalf("parseManifest(%q) = %+v with error %v", data, m, err)
			}
			return
		}
		if m.chunks < 1 || m.chunks > maxChunks || m.size > m.chunks*chunkSize || m.plain > m.size {
			t.Fatalf("parseManifest(%q) accepted %+v", data, m)
		}
		if again, err := parseManifest([]byte(m.String())); err != nil || again != m {
			t.Fatalf("manifest %+v re-encodes as %q, which reads as %+v, %v", m, m.String(), again, err)
		}
		genTime(m.gen)
		s := codecs[0]
		own := s.ownChunks("a/b")
		for _, i := range []int{0, m.chunks - 1} {
			ck := s.chunkKey("a/b", m.gen, i)
			if !strings.HasPrefix(ck, own+m.gen+".") || strings.Count(ck[len(own):], "/") != 0 || !reachesAsIs(ck) {
				t.Fatalf("generation %q puts chunk %d at %q, outside %q", m.gen, i, ck, own)
			}
			if n, err := strconv.Atoi(ck[len(own+m.gen+"."):]); err != nil || n != i {
				t.Fatalf("chunk key %q does not end in its number %d", ck, i)
			}
		}
	})
}
