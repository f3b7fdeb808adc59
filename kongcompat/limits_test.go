package kongcompat_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/kongcompat"
)

// hugeInputs are inputs over the adapter's limits, with the message each
// must give: over the size limit (refused before parsing), and over the
// number of values in JSON, in YAML without aliases and in YAML through
// aliases (only the last speaks of aliases).
func hugeInputs() []struct {
	name, want string
	body       []byte
	aliases    bool
} {
	plugin := "_format_version: \"3.0\"\nplugins:\n- name: acme\n  config: {account_email: ops@example.com}\n"
	var yamlList, yamlBig bytes.Buffer
	yamlList.WriteString(plugin + "consumers:\n")
	for range 200_001 {
		yamlList.WriteString("- 0\n")
	}
	yamlBig.WriteString(plugin + "consumers:\n")
	for yamlBig.Len() <= kongcompat.MaxKongConfigSize {
		yamlBig.WriteString("- username: someone\n")
	}
	jsonList := `{"name":"acme","config":{"account_email":"ops@example.com"},"tags":[` + strings.Repeat("0,", 200_000) + "0]}"
	aliases := plugin + "a: &a [0,0,0,0,0,0,0,0,0,0]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
	return []struct {
		name, want string
		body       []byte
		aliases    bool
	}{
		{"size", "more than 16 MiB, the limit of the kong adapter", yamlBig.Bytes(), false},
		{"JSON values", "more than 200000 values", []byte(jsonList), false},
		{"YAML values", "more than 200000 values", yamlList.Bytes(), false},
		{"YAML aliases", "more than 200000 values", []byte(aliases), true},
	}
}

// TestAdaptLimits: each limit is reported as what it is, promptly.
func TestAdaptLimits(t *testing.T) {
	for _, c := range hugeInputs() {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			out, _, err := mapEnv(nil).Adapt(c.body, map[string]any{"filename": "kong.yml"})
			took := time.Since(start)
			if err == nil || out != nil {
				t.Fatalf("adapted %d bytes: %v", len(c.body), err)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "kong.yml") {
				t.Errorf("error %q, want %q", err, c.want)
			}
			if strings.Contains(err.Error(), "alias") != c.aliases {
				t.Errorf("error %q: aliases mentioned = %v, want %v", err, !c.aliases, c.aliases)
			}
			if took > 10*time.Second {
				t.Errorf("took %s", took)
			}
		})
	}
}
