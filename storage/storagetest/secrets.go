package storagetest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// Module is a Caddy storage module under test, as Secrets provisions it.
type Module interface {
	caddy.Provisioner
	fmt.Stringer
}

// Secret is one secret field of a storage module (a password, a token, a
// key), for Secrets.
type Secret struct {
	// Field is the field's JSON name, which every error about it names.
	Field string

	// Module returns a new module whose field is v, with whatever else
	// the field needs to be used (e.g. a master_name for a Sentinel
	// password); it provisions without a server.
	Module func(v string) Module

	// Good is a valid value of the field; String must not show it.
	Good string
}

// A literal secret with a brace fragment, which Caddy's replacer takes
// for an unknown placeholder, and its parts, none of which an error may
// show.
var (
	secretParts   = []string{"head-pa55", "QZfragment", "tail-w0rd"}
	secretLiteral = secretParts[0] + "{" + secretParts[1] + "}" + secretParts[2]
)

// Secrets checks every secret field of a storage module against
// caddy-acme's rule for secrets: a value that fails placeholder expansion
// (a literal with a brace fragment, or an empty {env.…} placeholder)
// fails Provision with an error that names the field and shows no part of
// a literal value (a whole-value placeholder is a reference, and may be
// shown); and String, which certmagic logs, shows none of the values,
// provisioned or not, literal or from a placeholder. Provision must not
// need a server.
func Secrets(t *testing.T, secrets []Secret) {
	t.Setenv("CADDY_ACME_UNSET_X", "") // empty is as bad as unset
	for _, sc := range secrets {
		t.Run(sc.Field, func(t *testing.T) {
			for _, tc := range []struct{ name, value string }{
				{"literal with a brace fragment", secretLiteral},
				{"unset placeholder", "{env.CADDY_ACME_UNSET_X}"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					m := sc.Module(tc.value)
					err := provisionModule(t, m)
					if err == nil {
						t.Fatalf("Provision accepted %s %q", sc.Field, tc.value)
					}
					if msg := err.Error(); !strings.HasPrefix(msg, sc.Field+": ") || !strings.Contains(msg, "placeholder") {
						t.Fatalf("error %q does not name the field %s and the placeholder failure", msg, sc.Field)
					}
					for _, part := range secretParts {
						if strings.Contains(err.Error(), part) {
							t.Fatalf("error %q shows part of the literal value", err)
						}
					}
					checkString(t, m, secretParts...)
				})
			}
			t.Run("good value", func(t *testing.T) {
				t.Setenv("CADDY_ACME_TEST_SECRET", sc.Good)
				for _, v := range []string{sc.Good, "{env.CADDY_ACME_TEST_SECRET}"} {
					m := sc.Module(v)
					checkString(t, m, sc.Good)
					if err := provisionModule(t, m); err != nil {
						t.Fatalf("Provision with %s %q: %v", sc.Field, v, err)
					}
					checkString(t, m, sc.Good)
				}
			})
		})
	}
}

// provisionModule provisions m with a config context that ends with the
// test, and cleans it up with the test.
func provisionModule(t *testing.T, m Module) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	err := m.Provision(ctx)
	t.Cleanup(func() {
		if c, ok := m.(caddy.CleanerUpper); ok {
			if err := c.Cleanup(); err != nil {
				t.Errorf("Cleanup: %v", err)
			}
		}
		cancel()
	})
	return err
}

// checkString fails if m's String shows one of the secrets.
func checkString(t *testing.T, m Module, secrets ...string) {
	t.Helper()
	out := m.String()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatalf("String() = %q shows a secret", out)
		}
	}
}
