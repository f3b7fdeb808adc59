package vault

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// codecs are storages with the key layouts the fuzz targets check: the
// default one and a Kong-style nested path_prefix with its own lock_prefix.
var codecs = []*Storage{
	{mount: defaultMount, prefix: defaultPathPrefix, lockPrefix: defaultPathPrefix + "-locks"},
	{mount: "kv", prefix: "kong/acme", lockPrefix: "kong/acme-locks"},
}

// FuzzKeys checks how certmagic keys map to Vault API paths and back. A
// key the storage accepts is sent unchanged (the Vault client cleans
// request paths with path.Join) and survives JSON (how LIST returns
// names); its data and metadata paths decode back to it; the entry LIST
// returns for it (and for each folder above it) in its parent folder maps
// back to it; two different keys never share a path, and no key shares
// one with a lock. Any entry a LIST may return (garbage included) maps to
// nothing or to a valid direct child of the folder listed, so List and
// Delete never leave the folder or loop on it. A rejected key is
// fs.ErrInvalid.
func FuzzKeys(f *testing.F) {
	for _, k := range []string{
		"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.crt",
		"acme/ca/users/ops@example.com/ops.json", "a", "a/b", "/a/b/", "a//b", "a/./b", "a/../b", "..",
		"x/%41", "x/q?q", "x/h#h", "x/ sp ", "x/\xff", "x/é", "x/%2F", "x/...",
	} {
		f.Add(k, "a/b", "b/")
		f.Add(k, k+"x", "")
		f.Add("a", k, k)
	}
	f.Add("a", "b", "/")
	f.Add("", "a", "..")
	f.Add("a", "a", "c//")
	f.Fuzz(func(t *testing.T, key, other, entry string) {
		k, o := backend.Clean(key), backend.Clean(other)
		for _, s := range codecs {
			dirs := append(backend.Parents(k), "")
			err := checkKey(k)
			if err != nil {
				if !errors.Is(err, fs.ErrInvalid) {
					t.Fatalf("checkKey(%q) = %v, not fs.ErrInvalid", k, err)
				}
				dirs = []string{"", "a"}
			} else if k != "" {
				p := s.dataPath(k)
				if back, ok := strings.CutPrefix(p, s.mount+"/data/"+s.prefix+"/"); !ok || back != k {
					t.Fatalf("dataPath(%q) = %q does not decode back", k, p)
				}
				if m := s.metaPath(s.prefix, k); strings.TrimPrefix(m, s.mount+"/metadata/"+s.prefix+"/") != k {
					t.Fatalf("metaPath(%q) = %q does not decode back", k, m)
				}
				parent := ""
				if ps := backend.Parents(k); len(ps) > 0 {
					parent = ps[len(ps)-1]
				}
				for _, p := range []string{p, s.metaPath(s.prefix, k), s.metaPath(s.prefix, parent)} {
					if sent := path.Join("", "/v1/"+p); sent != "/v1/"+p {
						t.Fatalf("key %q: the client sends %q for %q", k, sent, p)
					}
				}
				var back string
				if b, err := json.Marshal(k); err != nil || json.Unmarshal(b, &back) != nil || back != k {
					t.Fatalf("key %q does not survive JSON: %q", k, back)
				}

				// The entries naming k and its folders map back to them.
				up := ""
				for _, d := range append(backend.Parents(k), k) {
					e := strings.TrimPrefix(d[len(up):], "/")
					if d != k {
						e += "/"
					}
					if got, folder, ok := entryKey(up, e); !ok || got != d || folder != (d != k) {
						t.Fatalf("entry %q of folder %q = %q, %v, %v; want %q", e, up, got, folder, ok, d)
					}
					up = d
				}

				if checkKey(o) == nil && o != "" {
					if o != k && s.dataPath(o) == s.dataPath(k) {
						t.Fatalf("keys %q and %q share the path %q", k, o, s.dataPath(k))
					}
					lock := s.mount + "/data/" + s.lockPrefix + "/" + o
					if lock == p || strings.HasPrefix(lock, s.mount+"/data/"+s.prefix+"/") {
						t.Fatalf("lock %q lies among the keys (key %q at %q)", o, k, p)
					}
				}
			}

			// Any LIST entry, in any folder.
			for _, dir := range dirs {
				got, folder, ok := entryKey(dir, entry)
				if !ok {
					if got != "" {
						t.Fatalf("entryKey(%q, %q) = %q, not ok", dir, entry, got)
					}
					continue
				}
				if child, under := backend.Child(dir, got); !under || child != got || checkKey(got) != nil {
					t.Fatalf("entry %q of folder %q maps to %q: not a valid direct child", entry, dir, got)
				}
				name, isFolder := strings.CutSuffix(entry, "/")
				if got != join(dir, name) || folder != isFolder {
					t.Fatalf("entry %q of folder %q maps to %q (folder %v)", entry, dir, got, folder)
				}
			}
		}
	})
}

// FuzzValues checks the value envelope in a secret's data: every value
// round-trips through the JSON of a write and of a read; and any JSON read
// back from Vault (a foreign secret, a damaged one, a lock written by
// another node) decodes to a value or an error, never a panic.
func FuzzValues(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), []byte(`{"data":{"data":{"value":"x"}}}`))
	f.Add([]byte("\xff\xfe"), []byte(`{"data":{"data":{"value":"//79","encoding":"base64"}}}`))
	f.Add([]byte{}, []byte(`{"data":{"data":{"value":"!!","encoding":"base64"}}}`))
	f.Add([]byte("\u2028<&>"), []byte(`{"data":{"data":{"value":null,"encoding":"rot13"}}}`))
	f.Add([]byte("a\x00b"), []byte(`{"data":{"data":{"token":"t","holder":"h/1"},"metadata":{"created_time":"2024-01-01T00:00:00Z","deletion_time":"2024-01-01T00:00:02Z","version":3}}}`))
	f.Add([]byte("x"), []byte(`{"data":{"metadata":{"deletion_time":"not a time","version":-1}}}`))
	f.Fuzz(func(t *testing.T, value, raw []byte) {
		body, err := json.Marshal(writeRequest{Data: encodeValue(value)})
		if err != nil {
			t.Fatal(err)
		}
		// What Vault returns is what was written, under data.data.
		var written struct {
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(body, &written); err != nil {
			t.Fatal(err)
		}
		var resp readResponse
		if err := json.Unmarshal([]byte(`{"data":{"data":`+string(written.Data)+`}}`), &resp); err != nil {
			t.Fatal(err)
		}
		if got, err := resp.Data.Data.decode(); err != nil || !bytes.Equal(got, value) {
			t.Fatalf("value %q read back as %q, %v", value, got, err)
		}

		// Garbage, as a value and as a lock.
		var g readResponse
		if json.Unmarshal(raw, &g) == nil && g.Data.Data != nil {
			_, _ = g.Data.Data.decode()
		}
		var l struct {
			Data struct {
				Data     *lockData       `json:"data"`
				Metadata versionMetadata `json:"metadata"`
			} `json:"data"`
		}
		if json.Unmarshal(raw, &l) == nil {
			s := &Storage{rt: backend.Runtime{Lease: 2 * time.Second}}
			s.expiresAfterLease(l.Data.Metadata)
		}
	})
}
