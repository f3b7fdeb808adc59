package placeholder

import (
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	t.Setenv("CADDY_ACME_PLACEHOLDER_TEST", "s3cret")
	for _, tc := range []struct {
		name, in, want, wantErr string
	}{
		{"literal", "plain", "plain", ""},
		{"env", "{env.CADDY_ACME_PLACEHOLDER_TEST}", "s3cret", ""},
		{"escaped brace", `a\{b\}`, "a{b}", ""},
		{"unset variable", "{env.CADDY_ACME_PLACEHOLDER_UNSET}", "", "address: evaluated placeholder {env.CADDY_ACME_PLACEHOLDER_UNSET} is empty"},
		{"unknown", "x{nope}y", "", "address: unrecognized placeholder {nope}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Expand("address", tc.in)
			switch {
			case tc.wantErr == "" && (err != nil || got != tc.want):
				t.Fatalf("Expand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
				t.Fatalf("Expand(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
		})
	}
}

// TestExpandSecret: the error of a secret names the field and holds no
// part of a literal value, only a placeholder that is the whole value.
func TestExpandSecret(t *testing.T) {
	t.Setenv("CADDY_ACME_PLACEHOLDER_TEST", "s3cret")
	if got, err := ExpandSecret("password", "{env.CADDY_ACME_PLACEHOLDER_TEST}"); err != nil || got != "s3cret" {
		t.Fatalf("ExpandSecret = %q, %v", got, err)
	}
	for _, literal := range []string{"pa{qz}word", "x{env.CADDY_ACME_PLACEHOLDER_UNSET}y", "{a}{b}", "{}"} {
		_, err := ExpandSecret("password", literal)
		if err == nil {
			t.Fatalf("ExpandSecret(%q) succeeded", literal)
		}
		if !strings.HasPrefix(err.Error(), "password: ") {
			t.Errorf("error %q does not name the field", err)
		}
		for _, frag := range []string{"qz", "UNSET", "{a}", "{b}", "{}"} {
			if strings.Contains(literal, frag) && strings.Contains(err.Error(), frag) {
				t.Errorf("ExpandSecret(%q) error %q shows %q", literal, err, frag)
			}
		}
	}
	_, err := ExpandSecret("password", "{env.CADDY_ACME_PLACEHOLDER_UNSET}")
	if err == nil || !strings.Contains(err.Error(), "{env.CADDY_ACME_PLACEHOLDER_UNSET}") {
		t.Fatalf("a whole-value placeholder is a reference and may be shown: %v", err)
	}
}
