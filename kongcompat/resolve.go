package kongcompat

import (
	"fmt"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// resolver turns the two kinds of indirection a Kong configuration can
// hold into values or Caddy placeholders:
//
//   - decK templates, ${{ env "DECK_NAME" }}, which decK replaces with an
//     environment variable when it reads the file. They are replaced the
//     same way here, from the environment of `caddy adapt` or `caddy run`,
//     except in credentials (passwords, tokens, the EAB key), where they
//     become the Caddy placeholder {env.DECK_NAME}, read when Caddy loads
//     the config, so that the secret is not written into the adapted JSON.
//   - Kong vault references in referenceable fields, {vault://env/name},
//     which become {env.NAME} (the env vault's naming: upper case, - as
//     _, with the vault's prefix). Other vaults (AWS, GCP, HashiCorp,
//     Azure, Conjur) are refused: Caddy cannot read them.
type resolver struct {
	lookupEnv func(string) (string, bool)
	// vaults maps a vault prefix used in references to the env vault's
	// variable prefix; the built-in "env" vault has none.
	vaults map[string]envVault
	used   map[string]bool // vault prefixes referenced
}

type envVault struct {
	kind   string // the vault's name: env, aws, gcp, hcv, azure, conjur
	prefix string // config.prefix of an env vault
}

var (
	templateRE = regexp.MustCompile(`\$\{\{\s*env\s+"([^"]*)"\s*(?:\|\s*(?:toBool|toInt|toFloat)\s*)?\}\}`)
	vaultRefRE = regexp.MustCompile(`^\{vault://([^/{}]+)/([^{}]*)\}$`)
	envNameRE  = regexp.MustCompile(`^[A-Za-z0-9_.\-]+$`)
)

// value resolves a string value checked against f at path.
func (r *resolver) value(f *field, v *value, path string) (*value, error) {
	if strings.Contains(v.str, "${{") {
		return r.template(f, v, path)
	}
	if f.referenceable && strings.HasPrefix(v.str, "{vault://") {
		return r.reference(v, path)
	}
	return v, nil
}

// template replaces the decK templates in v.
func (r *resolver) template(f *field, v *value, path string) (*value, error) {
	matches := templateRE.FindAllStringSubmatchIndex(v.str, -1)
	if len(matches) == 0 || strings.Contains(templateRE.ReplaceAllString(v.str, ""), "${{") {
		return nil, fmt.Errorf(`%s: unsupported decK template: only ${{ env "DECK_NAME" }} is understood`, path)
	}
	var b strings.Builder
	last := 0
	for _, m := range matches {
		name := v.str[m[2]:m[3]]
		if !strings.HasPrefix(name, "DECK_") || !envNameRE.MatchString(name) {
			return nil, fmt.Errorf("%s: decK template reads environment variable %q: decK reads only variables whose names start with DECK_", path, name)
		}
		lit := v.str[last:m[0]]
		last = m[1]
		if f.secret {
			b.WriteString(escapeBraces(lit))
			b.WriteString("{env." + name + "}")
			continue
		}
		val, ok := r.env(name)
		if !ok {
			return nil, fmt.Errorf("%s: decK template: environment variable %s is not set", path, name)
		}
		b.WriteString(lit)
		b.WriteString(val)
	}
	rest := v.str[last:]
	out := &value{kind: kString, line: v.line}
	if f.secret {
		b.WriteString(escapeBraces(rest))
		out.str, out.dyn = b.String(), true
		return out, nil
	}
	b.WriteString(rest)
	out.str = b.String()
	if f.typ != tString && len(matches) == 1 && matches[0][0] == 0 && matches[0][1] == len(v.str) {
		// decK substitutes text before parsing YAML: a whole-value template
		// in a number or boolean field gives a number or boolean
		return reparse(out), nil
	}
	if f.referenceable && strings.HasPrefix(out.str, "{vault://") {
		return r.reference(out, path)
	}
	return out, nil
}

// reparse reads a substituted string as the YAML scalar decK would have
// seen.
func reparse(v *value) *value {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(v.str), &doc); err != nil || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.ScalarNode {
		return v
	}
	out, err := scalar(doc.Content[0])
	if err != nil {
		return v
	}
	out.line = v.line
	return out
}

// reference translates a Kong vault reference into a Caddy placeholder.
func (r *resolver) reference(v *value, path string) (*value, error) {
	m := vaultRefRE.FindStringSubmatch(v.str)
	if m == nil {
		return nil, fmt.Errorf("%s: not a valid Kong vault reference: expected {vault://env/NAME}", path)
	}
	vault, ok := r.vaults[m[1]]
	if !ok && m[1] == "env" {
		vault, ok = envVault{kind: "env"}, true
	}
	if !ok {
		if known := map[string]bool{"aws": true, "gcp": true, "hcv": true, "azure": true, "conjur": true}; known[m[1]] {
			vault, ok = envVault{kind: m[1]}, true
		}
	}
	switch {
	case !ok:
		return nil, fmt.Errorf("%s: Kong vault reference to vault %q, which the file does not define", path, m[1])
	case vault.kind != "env":
		return nil, fmt.Errorf("%s: Kong vault reference {vault://%s/...} (a vault of type %s): caddy-acme reads secrets only from environment variables (Kong's env vault, translated to {env.NAME} placeholders); put the secret in an environment variable and reference it as {vault://env/NAME}", path, m[1], vault.kind)
	case !envNameRE.MatchString(m[2]):
		return nil, fmt.Errorf("%s: Kong vault reference with a JSON key, version or query: only {vault://env/NAME} can be translated to a Caddy placeholder", path)
	}
	if r.used == nil {
		r.used = make(map[string]bool)
	}
	r.used[m[1]] = true
	name := strings.ToUpper(strings.ReplaceAll(vault.prefix+m[2], "-", "_"))
	return &value{kind: kString, str: "{env." + name + "}", dyn: true, line: v.line}, nil
}

func (r *resolver) env(name string) (string, bool) {
	if r.lookupEnv == nil {
		return "", false
	}
	return r.lookupEnv(name)
}

// escapeBraces makes s a literal for fields whose placeholders Caddy
// expands.
func escapeBraces(s string) string {
	if !strings.ContainsAny(s, "{}") {
		return s
	}
	return strings.NewReplacer("{", `\{`, "}", `\}`).Replace(s)
}
