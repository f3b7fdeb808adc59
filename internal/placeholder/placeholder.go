// Package placeholder expands Caddy placeholders ({env.NAME}, {file./path},
// …) in configuration values, the one way every caddy-acme module does it:
// in Provision, failing on an unknown or empty placeholder so that a
// missing variable is an error and not an empty password, with errors that
// name the field.
//
// A secret's error never holds a fragment of its value. Caddy's replacer
// names the placeholder it could not expand, and a literal secret that
// happens to contain braces ("pa{ss}word") would show part of itself that
// way; so for a secret the placeholder is shown only when the whole value
// is one placeholder (a reference, not the secret).
package placeholder

import (
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// Expand returns v with its placeholders replaced. An error names field
// and the placeholder that failed.
func Expand(field, v string) (string, error) {
	out, err := caddy.NewReplacer().ReplaceOrErr(v, true, true)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return out, nil
}

// ExpandSecret is Expand for a secret (a password, token, key): an error
// names field and shows nothing of v unless v is a single placeholder.
func ExpandSecret(field, v string) (string, error) {
	out, err := caddy.NewReplacer().ReplaceOrErr(v, true, true)
	if err == nil {
		return out, nil
	}
	if IsOne(v) {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return "", fmt.Errorf("%s: expanding placeholders: unknown or empty placeholder (value not shown; write a literal { as \\{)", field)
}

// IsOne reports whether v is exactly one placeholder, such as
// {env.REDIS_PASSWORD}.
func IsOne(v string) bool {
	return len(v) > 2 && v[0] == '{' && v[len(v)-1] == '}' &&
		strings.Count(v, "{") == 1 && strings.Count(v, "}") == 1
}
