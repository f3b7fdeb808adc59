package issuance

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeARI: the scan's one-pass decodeARI reads stored certificate
// metadata (which anyone with access to the storage may have written)
// exactly as parseARI, which keeps the whole metadata to store the ARI
// back: the same window, the same success or failure, never a panic.
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
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if caseVariantKeys(data) {
			// encoding/json matches struct fields case-insensitively (as
			// certmagic, which reads this metadata into structs, does);
			// parseARI's maps do not
			t.Skip()
		}
		got, gotErr := decodeARI(data)
		want, _, wantErr := parseARI(data)
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("decodeARI error %v, parseARI error %v", gotErr, wantErr)
		}
		if gotErr != nil {
			return
		}
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		if string(g) != string(w) {
			t.Fatalf("decodeARI %s, parseARI %s", g, w)
		}
	})
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
