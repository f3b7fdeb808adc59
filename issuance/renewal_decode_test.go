package issuance

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"unicode/utf8"

	"github.com/mholt/acmez/v3/acme"
)

// FuzzDecodeARI: the scan's decodeARI reads stored certificate metadata
// (which anyone with access to the storage may have written) exactly as
// parseARI, which keeps the whole metadata to store the ARI back: the same
// window, the same success or failure, never a panic. And its one pass
// reads exactly what its step-by-step decoding (decodeARISteps) reads, for
// every input (repeated keys, other spellings and escapes included).
func FuzzDecodeARI(f *testing.F) {
	for _, seed := range []string{
		`{"sans":["a.example.com"],"issuer_data":{"url":"https://ca/cert/1","ca":"https://ca/dir","renewal_info":{"suggestedWindow":{"start":"2026-01-01T00:00:00Z","end":"2026-01-02T00:00:00Z"},"_uniqueIdentifier":"x.y","_retryAfter":"2026-01-01T06:00:00Z","_selectedTime":"2026-01-01T12:00:00Z"}}}`,
		`{"sans":["a.example.com"]}`,
		`{"issuer_data":null}`,
		`{"issuer_data":{}}`,
		`{"issuer_data":{"renewal_info":null}}`,
		`{"issuer_data":"a string"}`,
		`{"issuer_data":{"renewal_info":"a string"}}`,
		`{"issuer_data":{"renewal_info":{"suggestedWindow":{"start":"not a time"}}}}`,
		`{"issuer_data":[1,2]}`,
		`[]`, `null`, `"x"`, ``, `{`, `not json`,
		`{"Issuer_Data":{"renewal_info":{"suggestedWindow":{"start":"2026-01-01T00:00:00Z","end":"2026-01-02T00:00:00Z"}}}}`,
		// a key twice: the last one counts
		`{"issuer_data":{"renewal_info":{"suggestedWindow":{"start":"2026-01-01T00:00:00Z","end":"2026-01-02T00:00:00Z"}}},"issuer_data":{"url":"x"}}`,
		`{"issuer_data":{"renewal_info":{"suggestedWindow":{"start":"2026-01-01T00:00:00Z","end":"2026-01-02T00:00:00Z"}},"renewal_info":{"_retryAfter":"2026-01-01T06:00:00Z"}}}`,
		`{"issuer_data":{"renewal_info":{"suggestedWindow":{"start":"2026-01-01T00:00:00Z","end":"2026-01-02T00:00:00Z"}}},"ISSUER_DATA":null}`,
		`{"issuer_data":{"renewal_info":{"suggestedWindow":{"start":"2026-01-01T00:00:00Z","end":"2026-01-02T00:00:00Z"}}},"issuer\u005fdata":{}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, gotErr := decodeARI(data)
		steps, stepsErr := decodeARISteps(data)
		if (gotErr == nil) != (stepsErr == nil) {
			t.Fatalf("decodeARI error %v, decodeARISteps error %v", gotErr, stepsErr)
		}
		if g, w := asJSON(got), asJSON(steps); g != w {
			t.Fatalf("decodeARI %s, decodeARISteps %s", g, w)
		}
		if caseVariantKeys(data) {
			// encoding/json matches struct fields case-insensitively (as
			// certmagic, which reads this metadata into structs, does);
			// parseARI's maps do not
			t.Skip()
		}
		want, _, wantErr := parseARI(data)
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("decodeARI error %v, parseARI error %v", gotErr, wantErr)
		}
		if gotErr != nil {
			return
		}
		if g, w := asJSON(got), asJSON(want); g != w {
			t.Fatalf("decodeARI %s, parseARI %s", g, w)
		}
	})
}

// asJSON is v in JSON, for comparing windows ("" if it has none).
func asJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// caseVariantKeys reports whether data may hold "issuer_data" or
// "renewal_info" spelt in another case: an ASCII case variant, an escape or
// a non-ASCII letter that folds to one.
func caseVariantKeys(data []byte) bool {
	if bytes.Contains(data, []byte(`\u`)) || slices.ContainsFunc(data, func(b byte) bool { return b >= utf8.RuneSelf }) {
		return true
	}
	lower := bytes.ToLower(data)
	for _, key := range [][]byte{[]byte("issuer_data"), []byte("renewal_info")} {
		if bytes.Count(lower, key) != bytes.Count(data, key) {
			return true
		}
	}
	return false
}

// BenchmarkDecodeARI reads the ARI of certmagic's metadata of a
// certificate, as the renewal scan does for every certificate: decodeARI
// (one pass) against decodeARISteps (one level at a time) in the same run.
func BenchmarkDecodeARI(b *testing.B) {
	meta := []byte(`{"sans":["h000001.scale.example.com"],"issuer_data":{"url":"https://127.0.0.1:14000/certZ/5d9c4f3b2a1e","ca":"https://127.0.0.1:14000/dir","account":"https://127.0.0.1:14000/my-account/1","renewal_info":{"suggestedWindow":{"start":"2026-01-01T00:00:00Z","end":"2026-01-02T00:00:00Z"},"_uniqueIdentifier":"aGVsbG8.d29ybGQ","_retryAfter":"2026-01-01T06:00:00Z","_selectedTime":"2026-01-01T12:00:00Z"}}}`)
	for _, bc := range []struct {
		name   string
		decode func([]byte) (acme.RenewalInfo, error)
	}{{"one_pass", decodeARI}, {"steps", decodeARISteps}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if ari, err := bc.decode(meta); err != nil || !ari.HasWindow() {
					b.Fatalf("%+v, %v", ari, err)
				}
			}
		})
	}
}
