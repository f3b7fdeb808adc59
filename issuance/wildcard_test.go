package issuance

import (
	"context"
	"testing"

	"github.com/acmekit/caddy-acme/internal/allowlist"
)

// TestWildcardSubject: with Options.Wildcard, a name one label below a
// `*.x` entry (of the app's domains or of the domain list) is served by
// `*.x`; a deeper name, a name under no wildcard entry and every name
// without Options.Wildcard keep their own certificate; `*.x` itself is
// allowed only as such a subject, never through Ask.
func TestWildcardSubject(t *testing.T) {
	m, err := allowlist.New([]string{"*.example.com", "exact.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	allow := func(name string) error {
		if m.Match(name) {
			return nil
		}
		return ErrNotListed
	}
	on := buildRuntime(t, noCA, nil, Options{Allow: allow, Wildcard: m.HasWildcard,
		Ask: func(context.Context, string) error { return nil }})
	if _, err := on.AddDomains(t.Context(), []string{"*.listed.example.net"}); err != nil {
		t.Fatal(err)
	}
	off := buildRuntime(t, noCA, nil, Options{Allow: allow})
	for _, tc := range []struct{ name, on, off string }{
		{"a.example.com", "*.example.com", "a.example.com"},
		{"b.a.example.com", "b.a.example.com", "b.a.example.com"},
		{"example.com", "example.com", "example.com"},
		{"exact.example.org", "exact.example.org", "exact.example.org"},
		{"x.listed.example.net", "*.listed.example.net", "x.listed.example.net"},
		{"*.example.com", "*.example.com", "*.example.com"},
		{"192.0.2.1", "192.0.2.1", "192.0.2.1"},
		{"localhost", "localhost", "localhost"},
	} {
		if got := on.subject(tc.name); got != tc.on {
			t.Errorf("with wildcard certificates, subject(%q) = %q, want %q", tc.name, got, tc.on)
		}
		if got := off.subject(tc.name); got != tc.off {
			t.Errorf("without, subject(%q) = %q, want %q", tc.name, got, tc.off)
		}
	}
	for _, name := range []string{"*.example.com", "*.listed.example.net"} {
		if ask, err := on.allow(name); err != nil || ask {
			t.Errorf("allow(%q) = %v, %v; want allowed without asking", name, ask, err)
		}
		if _, err := off.allow(name); err == nil {
			t.Errorf("without wildcard certificates, allow(%q) = nil, want refused", name)
		}
	}
	for _, name := range []string{"*.a.example.com", "*.example.org", "a.*.example.com", "*", "*.com"} {
		if _, err := on.allow(name); err == nil {
			t.Errorf("allow(%q) = nil, want refused (no such wildcard entry), and never asked", name)
		}
	}
	if n := testing.AllocsPerRun(100, func() { on.subject("b.a.example.com") }); n != 0 {
		t.Errorf("subject of a name no wildcard serves allocates %v times", n)
	}
}

// TestStoredName: the storage folders certmagic writes (StorageKeys.Safe)
// are turned back into the names they hold.
func TestStoredName(t *testing.T) {
	for _, tc := range []struct{ dir, want string }{
		{"wildcard_.example.com", "*.example.com"},
		{"a.example.com", "a.example.com"},
		{"my-host.example.com", "my-host.example.com"},
		{"--1", "::1"},
		{"2001-db8--1", "2001:db8::1"},
		{"my-host", "my-host"},
		{"192.0.2.1", "192.0.2.1"},
	} {
		if got := storedName(tc.dir); got != tc.want {
			t.Errorf("storedName(%q) = %q, want %q", tc.dir, got, tc.want)
		}
	}
}
