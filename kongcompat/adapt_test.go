package kongcompat_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/acmekit/caddy-acme/kongcompat"
)

var update = flag.Bool("update", false, "rewrite the golden files (output.json, warnings.txt, error.txt) in testdata/adapt")

// goldenCase is a directory of testdata/adapt: input.yml or input.json
// (the Kong configuration), optional kong.conf (given as the kong_conf
// option) and env (KEY=VALUE lines: the only environment the adapter
// sees), and the expected results: output.json and warnings.txt, or
// error.txt; validate_error.txt, if present, is what caddy.Validate of
// the output must report.
type goldenCase struct {
	name, dir, input string
	env              map[string]string
}

func goldenCases(t testing.TB) []goldenCase {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join("testdata", "adapt", "*"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no golden cases: %v", err)
	}
	var cases []goldenCase
	for _, dir := range dirs {
		inputs, _ := filepath.Glob(filepath.Join(dir, "input.*"))
		if len(inputs) != 1 {
			t.Fatalf("%s: want exactly one input.* file, found %d", dir, len(inputs))
		}
		c := goldenCase{name: filepath.Base(dir), dir: dir, input: inputs[0], env: readEnv(t, filepath.Join(dir, "env"))}
		cases = append(cases, c)
	}
	return cases
}

func readEnv(t testing.TB, file string) map[string]string {
	t.Helper()
	env := make(map[string]string)
	data, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return env
	}
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: bad line %q", file, line)
		}
		env[k] = v
	}
	return env
}

// adapt runs the adapter on the case with only the case's environment.
func (c goldenCase) adapt(t testing.TB) ([]byte, []caddyconfig.Warning, error) {
	t.Helper()
	body, err := os.ReadFile(c.input)
	if err != nil {
		t.Fatal(err)
	}
	opts := map[string]any{"filename": filepath.Base(c.input)}
	if conf := filepath.Join(c.dir, "kong.conf"); fileExists(conf) {
		opts["kong_conf"] = conf
	}
	return mapEnv(c.env).Adapt(body, opts)
}

// mapEnv is an adapter that sees only env.
func mapEnv(env map[string]string) kongcompat.Adapter {
	return kongcompat.Adapter{LookupEnv: func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}}
}

func fileExists(name string) bool {
	_, err := os.Stat(name)
	return err == nil
}

// formatWarnings renders warnings one per line, as Caddy logs them.
func formatWarnings(ws []caddyconfig.Warning) string {
	var b strings.Builder
	for _, w := range ws {
		fmt.Fprintf(&b, "%s:%d", w.File, w.Line)
		if w.Directive != "" {
			fmt.Fprintf(&b, ": %s", w.Directive)
		}
		fmt.Fprintf(&b, ": %s\n", w.Message)
	}
	return b.String()
}

func TestAdaptGolden(t *testing.T) {
	for _, c := range goldenCases(t) {
		t.Run(c.name, func(t *testing.T) {
			out, warnings, err := c.adapt(t)
			if err != nil {
				if out != nil {
					t.Error("output returned with an error")
				}
				compareGolden(t, filepath.Join(c.dir, "error.txt"), err.Error()+"\n")
				for _, f := range []string{"output.json", "warnings.txt"} {
					if fileExists(filepath.Join(c.dir, f)) {
						t.Errorf("adapting failed but %s exists: %v", f, err)
					}
				}
				return
			}
			if fileExists(filepath.Join(c.dir, "error.txt")) {
				t.Fatalf("adapting succeeded, want the error in error.txt")
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, out, "", "\t"); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, out)
			}
			pretty.WriteByte('\n')
			compareGolden(t, filepath.Join(c.dir, "output.json"), pretty.String())
			compareGolden(t, filepath.Join(c.dir, "warnings.txt"), formatWarnings(warnings))
		})
	}
}

func compareGolden(t *testing.T, file, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (go test -update rewrites it)\n--- got ---\n%s\n--- want ---\n%s", file, got, want)
	}
}
