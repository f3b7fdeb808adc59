package backend

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestCaddyfileHelpers: the helpers parse (arity, type) and refuse only the
// zero a field's JSON cannot hold; ranges are Provision's.
func TestCaddyfileHelpers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		parse   func(d *caddyfile.Dispenser) (any, error)
		want    any
		wantErr string
	}{
		{name: "int", input: "db 3", parse: anyInt(false), want: 3},
		{name: "int zero", input: "db 0", parse: anyInt(false), want: 0},
		{name: "int negative", input: "db -1", parse: anyInt(false), want: -1},
		{name: "int not a number", input: "db one", parse: anyInt(false), wantErr: `db: expected a number, got "one"`},
		{name: "int missing", input: "db", parse: anyInt(false), wantErr: "wrong argument count"},
		{name: "int extra", input: "db 1 2", parse: anyInt(false), wantErr: "wrong argument count"},
		{name: "non-zero int", input: "port 70000", parse: anyInt(true), want: 70000},
		{name: "non-zero int zero", input: "port 0", parse: anyInt(true), wantErr: `port: expected a number, got "0"`},
		{name: "duration", input: "timeout 1m", parse: anyDuration, want: caddy.Duration(time.Minute)},
		{name: "duration in days", input: "timeout 1d", parse: anyDuration, want: caddy.Duration(24 * time.Hour)},
		{name: "negative duration", input: "timeout -1s", parse: anyDuration, want: caddy.Duration(-time.Second)},
		{name: "zero duration", input: "timeout 0s", parse: anyDuration, wantErr: `timeout: expected a positive duration such as 10s, got "0s"`},
		{name: "not a duration", input: "timeout soon", parse: anyDuration, wantErr: `timeout: expected a positive duration such as 10s, got "soon"`},
		{name: "duration extra", input: "timeout 1s 2s", parse: anyDuration, wantErr: "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(tc.input)
			d.Next()
			got, err := tc.parse(d)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "Testfile:") {
					t.Fatalf("error = %v, want one containing %q and the file:line", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func anyInt(nonZero bool) func(d *caddyfile.Dispenser) (any, error) {
	return func(d *caddyfile.Dispenser) (any, error) { return OneInt(d, "a number", nonZero) }
}

func anyDuration(d *caddyfile.Dispenser) (any, error) { return OneDuration(d) }

// TestSeen: a repeated subdirective is refused with Caddy's message, naming
// it and its place.
func TestSeen(t *testing.T) {
	d := caddyfile.NewTestDispenser("mod {\n a 1\n b 2\n a 3\n}")
	d.Next()
	seen := make(Seen)
	var errs []string
	for d.NextBlock(0) {
		if err := seen.Once(d); err != nil {
			errs = append(errs, err.Error())
		}
		d.RemainingArgs()
	}
	if len(errs) != 1 || !strings.Contains(errs[0], "duplicate subdirective 'a'") || !strings.Contains(errs[0], "Testfile:4") {
		t.Fatalf("errors %q, want one duplicate of a at line 4", errs)
	}
}
