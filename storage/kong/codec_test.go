package kong

import (
	"bytes"
	"testing"
)

func TestValueEncoding(t *testing.T) {
	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}
	tests := []struct {
		name    string
		value   []byte
		force   bool
		encoded bool
	}{
		{"empty", []byte{}, false, false},
		{"pem", []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), false, false},
		{"json unicode", []byte(`{"host":"bücher.example"}`), false, false},
		{"nul", []byte("a\x00b"), false, true},
		{"invalid utf-8", []byte("\xff\xfe"), false, true},
		{"every byte", every, false, true},
		{"starts with the marker", []byte(marker + "AAAA"), false, true},
		{"forced", []byte("text"), true, true},
		{"forced empty", []byte{}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := encodeValue(tt.value, tt.force)
			if got := bytes.HasPrefix(text, []byte(marker)); got != tt.encoded {
				t.Fatalf("encoded = %v, want %v", got, tt.encoded)
			}
			if !tt.encoded && len(tt.value) > 0 && &text[0] != &tt.value[0] {
				t.Fatal("a text value was copied")
			}
			back, err := decodeValue(text)
			if err != nil || !bytes.Equal(back, tt.value) {
				t.Fatalf("decode = %q, %v; want %q", back, err, tt.value)
			}
			if n := decodedLen(int64(len(text)), tt.encoded); n != int64(len(tt.value)) {
				t.Fatalf("decodedLen = %d, want %d", n, len(tt.value))
			}
		})
	}
	if _, err := decodeValue([]byte(marker + "!!")); err == nil {
		t.Fatal("a marked value that is not base64 decoded")
	}
}

func TestCleanKey(t *testing.T) {
	for in, want := range map[string]string{
		"":        "",
		"/":       "",
		"a/b/":    "a/b",
		"/a//b/c": "a/b/c",
		"a///b":   "a/b",
		"日本/é":    "日本/é",
	} {
		if got, err := cleanKey(in); err != nil || got != want {
			t.Errorf("cleanKey(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"a\x00b", "a/\xff"} {
		if _, err := cleanKey(bad); err == nil {
			t.Errorf("cleanKey(%q) accepted", bad)
		}
	}
	if succ("caddy/") != "caddy0" || succ("caddy/a/") != "caddy/a0" {
		t.Fatal("succ")
	}
}
