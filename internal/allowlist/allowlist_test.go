package allowlist

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	tests := []struct {
		name    string
		entries []string
		allow   []string
		deny    []string
	}{
		{
			name:    "exact",
			entries: []string{"example.com"},
			allow:   []string{"example.com"},
			deny:    []string{"a.example.com", "example.org", "xexample.com", "example.co", "example", "com", ""},
		},
		{
			name:    "leftmost wildcard matches any depth below the suffix",
			entries: []string{"*.example.com"},
			allow:   []string{"a.example.com", "a.b.example.com", "x.y.z.example.com", "www.example.com"},
			deny:    []string{"example.com", "badexample.com", "a.badexample.com", "example.com.evil.net", "a.example.org", ".example.com"},
		},
		{
			name:    "leftmost wildcard on a TLD",
			entries: []string{"*.com"},
			allow:   []string{"example.com", "a.b.com"},
			deny:    []string{"com", "example.net"},
		},
		{
			name:    "rightmost wildcard matches one or more labels after the prefix",
			entries: []string{"example.*"},
			allow:   []string{"example.com", "example.co.uk", "example.a.b.c"},
			deny:    []string{"example", "a.example.com", "examplex.com", "xexample.com", "www.example.com"},
		},
		{
			name:    "rightmost wildcard with a multi-label prefix",
			entries: []string{"www.example.*"},
			allow:   []string{"www.example.com", "www.example.co.uk"},
			deny:    []string{"www.example", "example.com", "a.www.example.com", "www.examplex.com"},
		},
		{
			name:    "wildcards never match an IPv4 address",
			entries: []string{"192.*", "*.example.com"},
			allow:   []string{"192.example"},
			deny:    []string{"192.0.2.1", "192.168.0.1"},
		},
		{
			name:    "IPv4 entry is an exact match",
			entries: []string{"192.0.2.1"},
			allow:   []string{"192.0.2.1", "192.0.2.1."},
			deny:    []string{"192.0.2.10", "192.0.2", "x.192.0.2.1", "192.000.002.001", "192.0.2.1:443"},
		},
		{
			name:    "IPv6 entry matches the address in any spelling",
			entries: []string{"2001:db8::1", "[::1]", "FE80::A:B", "2001:0db8:0:0:1:0:0:0"},
			allow: []string{
				"2001:db8::1", "2001:DB8::1", "2001:0db8:0000:0000:0000:0000:0000:0001", "[2001:db8::1]", "[2001:DB8:0::1]",
				"::1", "[::1]", "0:0:0:0:0:0:0:1", "::0:1",
				"fe80::a:b", "[fe80:0:0:0:0:0:a:b]",
				"2001:db8:0:0:1::", "2001:db8::1:0:0:0",
			},
			deny: []string{
				"2001:db8::2", "2001:db8::", "::", "::2",
				"[2001:db8::1]:443", "[::1]:443", "2001:db8::1.", "[2001:db8::1].", "[[::1]]", "[::1", "::1]",
				"fe80::a:b%eth0", "[fe80::a:b%25eth0]", "fe80::a:b%",
				"x.2001:db8::1", "2001:db8::1.x", " ::1", "::1 ",
			},
		},
		{
			name:    "IPv6 host never matches a wildcard or a host name",
			entries: []string{"*.example.com", "example.*", "*.com", "a.*", "localhost"},
			deny:    []string{"::1", "[::1]", "a::1", "2001:db8::a", "[a::]", "::a.b.c.d"},
		},
		{
			name:    "IPv4-mapped IPv6 hosts never match, not even the IPv4 entry",
			entries: []string{"192.0.2.1", "::c000:201"},
			allow:   []string{"192.0.2.1", "::c000:201", "::192.0.2.1"},
			deny:    []string{"::ffff:192.0.2.1", "[::ffff:192.0.2.1]", "::ffff:c000:201", "::FFFF:C000:201"},
		},
		{
			name:    "IPv4 and IPv6 entries are distinct",
			entries: []string{"192.0.2.1", "2001:db8::c000:201"},
			allow:   []string{"192.0.2.1", "2001:db8::192.0.2.1", "2001:db8::c000:201"},
			deny:    []string{"::192.0.2.1", "::ffff:192.0.2.1", "[192.0.2.1]"},
		},
		{
			name:    "upper-case entries match (Kong never matched them)",
			entries: []string{"API.Example.COM", "*.Wild.Example.COM", "Prefix.*"},
			allow:   []string{"api.example.com", "a.wild.example.com", "prefix.net"},
			deny:    []string{"wild.example.com"},
		},
		{
			name:    "upper-case hosts match",
			entries: []string{"api.example.com", "*.wild.example.com", "prefix.*"},
			allow:   []string{"API.EXAMPLE.COM", "Api.Example.Com", "A.B.WILD.EXAMPLE.COM", "PREFIX.NET"},
		},
		{
			name:    "IDN entry matches its punycode host",
			entries: []string{"bücher.example"},
			allow:   []string{"xn--bcher-kva.example", "XN--BCHER-KVA.EXAMPLE", "bücher.example", "BÜCHER.example"},
			deny:    []string{"bucher.example", "xn--bcher.example"},
		},
		{
			name:    "punycode entry matches its IDN host",
			entries: []string{"xn--bcher-kva.example"},
			allow:   []string{"bücher.example", "BÜCHER.EXAMPLE", "xn--bcher-kva.example."},
		},
		{
			name:    "IDN wildcards",
			entries: []string{"*.bücher.example", "münchen.*"},
			allow:   []string{"www.bücher.example", "www.xn--bcher-kva.example", "münchen.de", "xn--mnchen-3ya.de", "MÜNCHEN.DE"},
			deny:    []string{"bücher.example", "münchen", "a.münchen.de"},
		},
		{
			name:    "IDN in the host's other labels",
			entries: []string{"*.example.com"},
			allow:   []string{"bücher.example.com", "ｗｗｗ.example.com"},
		},
		{
			name:    "trailing dots",
			entries: []string{"example.com.", "*.wild.example.", "prefix.*."},
			allow:   []string{"example.com", "example.com.", "a.wild.example.", "a.wild.example", "prefix.com."},
			deny:    []string{"example.com..", "a.wild.example..", ".", ""},
		},
		{
			name:    "exact and wildcard together",
			entries: []string{"example.com", "*.example.com", "example.*"},
			allow:   []string{"example.com", "a.example.com", "example.org"},
			deny:    []string{"badexample.com", "a.example.org"},
		},
		{
			name:    "longest label and name",
			entries: []string{long63 + ".example.com"},
			allow:   []string{strings.ToUpper(long63) + ".example.com"},
			deny:    []string{long63 + "a.example.com"},
		},
		{
			name:    "invalid hosts never match",
			entries: []string{"*.example.com", "example.*", "example.com"},
			deny: []string{
				"", ".", "..", "example.com:443", "a.example.com:443", "[::1]", "::1", "[example.com]", "[]", "[",
				"a..example.com", ".example.com", "example..com", "-a.example.com", "a-.example.com",
				"a_b.example.com", "a b.example.com", "*.example.com", "a.example.com/", "example.com\x00",
				"\xff.example.com",
				strings.Repeat("a", 64) + ".example.com",
				strings.Repeat("a.", 126) + "example.com",
				strings.Repeat("ü", 2000) + ".example.com",
			},
		},
		{
			name:    "no entries",
			entries: []string{},
			deny:    []string{"example.com", "", "localhost"},
		},
		{
			name:    "duplicates",
			entries: []string{"example.com", "EXAMPLE.com.", "example.com", "*.example.com", "*.EXAMPLE.COM"},
			allow:   []string{"example.com", "a.example.com"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.entries)
			if err != nil {
				t.Fatalf("New(%q): %v", tt.entries, err)
			}
			for _, host := range tt.allow {
				if !m.Match(host) {
					t.Errorf("Match(%q) = false, want true", host)
				}
			}
			for _, host := range tt.deny {
				if m.Match(host) {
					t.Errorf("Match(%q) = true, want false", host)
				}
			}
		})
	}
}

func TestMatchNil(t *testing.T) {
	var m *Matcher
	if m.Match("example.com") {
		t.Error("nil Matcher matched")
	}
	if m.Len() != 0 || m.Entries() != nil {
		t.Errorf("nil Matcher: Len() = %d, Entries() = %q", m.Len(), m.Entries())
	}
	m, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Match("example.com") || m.Len() != 0 {
		t.Errorf("New(nil): Match = true or Len() = %d", m.Len())
	}
}

func TestEntries(t *testing.T) {
	tests := []struct {
		name    string
		entries []string
		want    []string
	}{
		{
			name:    "normalised",
			entries: []string{"Example.COM.", "*.Bücher.Example", "MÜNCHEN.*", "192.0.2.1."},
			want:    []string{"example.com", "*.xn--bcher-kva.example", "xn--mnchen-3ya.*", "192.0.2.1"},
		},
		{
			name: "IPv6 normalised",
			entries: []string{
				"2001:DB8::1", "2001:0db8:0:0:0:0:0:2", "[2001:db8::3]", "[::1]", "::", "FE80::AB:CD",
				"2001:db8:0:0:1::", "64:ff9b::192.0.2.1", "::192.0.2.1", "1:2:3:4:5:6:7:8",
			},
			want: []string{
				"2001:db8::1", "2001:db8::2", "2001:db8::3", "::1", "::", "fe80::ab:cd",
				"2001:db8:0:0:1::", "64:ff9b::c000:201", "::c000:201", "1:2:3:4:5:6:7:8",
			},
		},
		{
			name: "IPv6 deduplicated in every spelling",
			entries: []string{
				"2001:db8::1", "2001:DB8::1", "2001:0db8:0000:0000:0000:0000:0000:0001", "[2001:db8::1]",
				"[2001:DB8:0::1]", "example.com", "2001:db8:0::0:1", "::1", "0:0:0:0:0:0:0:1", "[::1]",
			},
			want: []string{"2001:db8::1", "example.com", "::1"},
		},
		{
			name:    "deduplicated in first-seen order",
			entries: []string{"b.example", "a.example", "B.EXAMPLE", "xn--bcher-kva.example", "bücher.example", "*.a.example", "a.example"},
			want:    []string{"b.example", "a.example", "xn--bcher-kva.example", "*.a.example"},
		},
		{
			name:    "same name in every kind",
			entries: []string{"example", "*.example", "example.*"},
			want:    []string{"example", "*.example", "example.*"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.entries)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Entries(); !slices.Equal(got, tt.want) {
				t.Errorf("Entries() = %q, want %q", got, tt.want)
			}
			if m.Len() != len(tt.want) {
				t.Errorf("Len() = %d, want %d", m.Len(), len(tt.want))
			}
			m.Entries()[0] = "mutated"
			if m.Entries()[0] == "mutated" {
				t.Error("Entries() returned the Matcher's own slice")
			}
			// The normalised entries build the same Matcher.
			again, err := New(m.Entries())
			if err != nil {
				t.Fatalf("New(Entries()): %v", err)
			}
			if got := again.Entries(); !slices.Equal(got, tt.want) {
				t.Errorf("New(Entries()).Entries() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	valid := []string{
		"example.com", "EXAMPLE.COM", "example.com.", "localhost", "a", "*.example.com", "*.com",
		"example.*", "www.example.*", "example.*.", "*.example.com.", "192.0.2.1", "255.255.255.255",
		"1.2.3.4.", "bücher.example", "*.bücher.example", "münchen.*", "xn--bcher-kva.example",
		"ｅｘａｍｐｌｅ.com", "a-b.example", "r3---sn-apo3qvuoxuxbt-j5pe.googlevideo.com",
		"0.example", "123abc.example", "1.2.3.*",
		"2001:db8::1", "::1", "::", "2001:DB8::1", "2001:0db8:0:0:0:0:0:1", "[2001:db8::1]", "[::1]",
		"fe80::1", "1:2:3:4:5:6:7:8", "64:ff9b::192.0.2.1", "::192.0.2.1", "::1:443",
		strings.Repeat("a", 63) + ".example",
		strings.Repeat("a.", 125) + "abc",      // 253 octets
		"*." + strings.Repeat("a.", 124) + "a", // 253 octets with "*" as "abc"
	}
	for _, entry := range valid {
		t.Run("valid/"+entry, func(t *testing.T) {
			if err := Validate(entry); err != nil {
				t.Errorf("Validate(%q) = %v, want nil", entry, err)
			}
		})
	}

	invalid := []struct {
		entry string
		want  string
	}{
		{"", "must not be empty"},
		{"*.*.example.com", "invalid wildcard: must have at most one wildcard"},
		{"*.example.*", "invalid wildcard: must have at most one wildcard"},
		{"**.example.com", "invalid wildcard: must have at most one wildcard"},
		{"*", "invalid wildcard: must be placed at leftmost or rightmost label"},
		{"*.", "invalid wildcard: must be placed at leftmost or rightmost label"},
		{"a.*.com", "invalid wildcard: must be placed at leftmost or rightmost label"},
		{"*example.com", "invalid wildcard: must be placed at leftmost or rightmost label"},
		{"example*", "invalid wildcard: must be placed at leftmost or rightmost label"},
		{"ex*ample.com", "invalid wildcard: must be placed at leftmost or rightmost label"},
		{"example.c*", "invalid wildcard: must be placed at leftmost or rightmost label"},
		{"*..", "empty label"},
		{"example.com:443", "must not have a port"},
		{"*.example.com:8443", "must not have a port"},
		{"192.0.2.1:80", "must not have a port"},
		{"fe80::1%eth0", "IPv6 zones are not allowed (%eth0)"},
		{"[fe80::1%25eth0]", "IPv6 zones are not allowed"},
		{"fe80::1%", "invalid IPv6 address"},
		{"::ffff:192.0.2.1", "IPv4-mapped IPv6 address: write the IPv4 address 192.0.2.1 instead"},
		{"[::FFFF:C000:201]", "IPv4-mapped IPv6 address: write the IPv4 address 192.0.2.1 instead"},
		{"::ffff:192.0.2.1%eth0", "IPv6 zones are not allowed"},
		{"[::1]:443", "must not have a port"},
		{"[2001:db8::1]:", "must not have a port"},
		{"[2001:db8::1]x", `invalid IPv6 address: text after "]"`},
		{"[2001:db8::1", `invalid IPv6 address: missing "]"`},
		{"2001:db8::1]", "invalid IPv6 address"},
		{"[[::1]]", "invalid IPv6 address"},
		{"[example.com:443]", "invalid IPv6 address"},
		{"[*.example.com:443]", "invalid IPv6 address"},
		{"2001:db8::*", "invalid wildcard: IPv6 addresses are matched by exact entries only"},
		{"*::1", "invalid wildcard: IPv6 addresses are matched by exact entries only"},
		{"*.2001:db8::1", "invalid wildcard: IPv6 addresses are matched by exact entries only"},
		{"2001:db8::1.*", "invalid wildcard: IPv6 addresses are matched by exact entries only"},
		{"[2001:db8::*]", "invalid wildcard: IPv6 addresses are matched by exact entries only"},
		{"2001:db8::1.", "invalid IPv6 address"},
		{"2001:db8::g", "invalid IPv6 address"},
		{"1:2:3:4:5:6:7:8:9", "invalid IPv6 address"},
		{"2001:db8:::1", "invalid IPv6 address"},
		{"::1.2.3", "invalid IPv6 address"},
		{"a:b", "invalid character ':'"},
		{"1:2", "must not have a port"},
		{"http://example.com", "invalid character ':'"},
		{"example.com:", "invalid character ':'"},
		{".example.com", "empty label"},
		{"example..com", "empty label"},
		{"example.com..", "empty label"},
		{".", "must not be empty"},
		{"..", "empty label"},
		{"-example.com", `label "-example" must not begin or end with a hyphen`},
		{"example-.com", `label "example-" must not begin or end with a hyphen`},
		{"example.com-", `label "com-" must not begin or end with a hyphen`},
		{"a_b.example.com", "invalid character '_'"},
		{"exa mple.com", "invalid character ' '"},
		{" example.com", "invalid character ' '"},
		{"example.com/", "invalid character '/'"},
		{"example.com\n", "invalid character '\\n'"},
		{strings.Repeat("a", 64) + ".example", "is longer than 63 octets"},
		{strings.Repeat("a.", 126) + "ab", "longer than 253 octets"},
		{"*." + strings.Repeat("a.", 124) + "ab", "longer than 253 octets"},
		{strings.Repeat("a", 2000), "longer than 1024 bytes"},
		{"1.2.3", "invalid IPv4 address"},
		{"example.123", "rightmost label must not be all-numeric"},
		{"*.0.2.1", "rightmost label must not be all-numeric"},
		{"*.192.0.2.1", "rightmost label must not be all-numeric"},
		{"256.0.0.1", "invalid IPv4 address"},
		{"01.2.3.4", "invalid IPv4 address"},
		{"1.2.3.4.5", "invalid IPv4 address"},
		{"xn--zz.example", "invalid punycode label \"xn--zz\""},
		{"xn--abc.example", "invalid punycode label \"xn--abc\""},
		{"ex\u00a0ample.com", "invalid internationalized domain name"},
		{"bü_cher.example", "invalid internationalized domain name"},
		{"＊.example.com", "invalid internationalized domain name"},
		{"\xff.example", "invalid UTF-8"},
		{"\ufffd.example", "invalid internationalized domain name"},
		{"xn--.example", `label "xn--" must not begin or end with a hyphen`},
	}
	for _, tt := range invalid {
		t.Run("invalid/"+tt.entry, func(t *testing.T) {
			err := Validate(tt.entry)
			if err == nil {
				t.Fatalf("Validate(%q) = nil, want an error containing %q", tt.entry, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate(%q) = %q, want it to contain %q", tt.entry, err, tt.want)
			}
			if prefix := fmt.Sprintf("domain %q: ", tt.entry); !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("Validate(%q) = %q, want it to start with %q", tt.entry, err, prefix)
			}
		})
	}
}

func TestValidateExactMessage(t *testing.T) {
	err := Validate("a.*.com")
	want := `domain "a.*.com": invalid wildcard: must be placed at leftmost or rightmost label`
	if err == nil || err.Error() != want {
		t.Errorf("Validate = %v, want %s", err, want)
	}
}

func TestNewError(t *testing.T) {
	tests := []struct {
		name    string
		entries []string
		want    string
	}{
		{
			name:    "names the index and the entry",
			entries: []string{"example.com", "a.*.com"},
			want:    `domains[1]: domain "a.*.com": invalid wildcard: must be placed at leftmost or rightmost label`,
		},
		{
			name:    "IPv6 entry",
			entries: []string{"2001:db8::1", "fe80::1%eth0"},
			want:    `domains[1]: domain "fe80::1%eth0": IPv6 zones are not allowed (%eth0)`,
		},
		{
			name:    "first error wins",
			entries: []string{"ok.example", "bad:1", "*.*", "also bad"},
			want:    `domains[1]: domain "bad:1": must not have a port`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.entries)
			if err == nil || err.Error() != tt.want {
				t.Errorf("New(%q) = %v, want error %s", tt.entries, err, tt.want)
			}
			if m != nil {
				t.Errorf("New returned a Matcher with an error")
			}
		})
	}
}

// bigEntries returns n entries, a third of each kind.
func bigEntries(n int) []string {
	entries := make([]string, 0, n)
	for i := range n {
		switch i % 3 {
		case 0:
			entries = append(entries, fmt.Sprintf("host%d.example.com", i))
		case 1:
			entries = append(entries, fmt.Sprintf("*.svc%d.example.net", i))
		case 2:
			entries = append(entries, fmt.Sprintf("tenant%d.*", i))
		}
	}
	return entries
}

func TestMatchManyRules(t *testing.T) {
	const n = 100_000
	m, err := New(bigEntries(n))
	if err != nil {
		t.Fatal(err)
	}
	if m.Len() != n {
		t.Fatalf("Len() = %d, want %d", m.Len(), n)
	}
	tests := []struct {
		host string
		want bool
	}{
		{"host0.example.com", true},
		{"host99999.example.com", true},
		{"HOST3.EXAMPLE.COM", true},
		{"host1.example.com", false}, // 1 is a wildcard slot
		{"host100000.example.com", false},
		{"a.host0.example.com", false},
		{"a.svc1.example.net", true},
		{"a.b.c.svc99997.example.net", true},
		{"svc1.example.net", false},
		{"a.svc2.example.net", false},
		{"tenant2.com", true},
		{"tenant99998.co.uk", true},
		{"tenant2", false},
		{"a.tenant2.com", false},
		{"tenant3.com", false},
		{"example.com", false},
		{"unrelated.org", false},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			if got := m.Match(tt.host); got != tt.want {
				t.Errorf("Match(%q) = %v, want %v", tt.host, got, tt.want)
			}
		})
	}
}

func TestMatchConcurrent(t *testing.T) {
	m, err := New(bigEntries(300))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan bool)
	for g := range 8 {
		go func() {
			ok := true
			for i := range 1000 {
				ok = ok && m.Match(fmt.Sprintf("host%d.example.com", (g*1000+i)%100*3))
			}
			done <- ok
		}()
	}
	for range 8 {
		if !<-done {
			t.Error("concurrent Match returned false for an allowed host")
		}
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	m, err := New(append(bigEntries(1000), "2001:db8::1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{
		"host0.example.com", "a.b.svc1.example.net", "tenant2.co.uk", "nope.example.org", "MiXeD.Case.Example.Com.", "bad host",
		"2001:db8::1", "[2001:DB8:0::1]", "2001:db8::2", "fe80::1%eth0", "[::1]:443", "::ffff:192.0.2.1",
	} {
		if n := testing.AllocsPerRun(100, func() { m.Match(host) }); n != 0 {
			t.Errorf("Match(%q) allocates %v times per call, want 0", host, n)
		}
	}
}

// BenchmarkMatch shows that the cost of Match does not depend on the number
// of entries: compare ns/op between rules=10 and rules=100000.
func BenchmarkMatch(b *testing.B) {
	hosts := []struct{ name, host string }{
		{"exact", "host9.example.com"},
		{"suffix", "a.b.svc7.example.net"},
		{"prefix", "tenant8.example.co.uk"},
		{"miss", "www.nothing-here.example.org"},
		{"upper", "HOST9.EXAMPLE.COM"},
		{"idn", "bücher.example.org"},
		{"ipv6", "[2001:DB8:0::1]"},
	}
	for _, n := range []int{10, 100_000} {
		m, err := New(bigEntries(n))
		if err != nil {
			b.Fatal(err)
		}
		for _, h := range hosts {
			b.Run(fmt.Sprintf("rules=%d/%s", n, h.name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					m.Match(h.host)
				}
			})
		}
	}
}

func TestNormalizeIP(t *testing.T) {
	tests := []struct {
		host, want string
		ok         bool
	}{
		{"2001:db8::1", "2001:db8::1", true},
		{"2001:DB8::1", "2001:db8::1", true},
		{"[2001:db8::1]", "2001:db8::1", true},
		{"[2001:0DB8:0000:0000:0000:0000:0000:0001]", "2001:db8::1", true},
		{"2001:db8:0:0:1::", "2001:db8:0:0:1::", true},
		{"::1", "::1", true},
		{"::", "::", true},
		{"::192.0.2.1", "::c000:201", true},
		{"192.0.2.1", "192.0.2.1", true},
		{"192.0.2.1.", "192.0.2.1", true},
		{"0.0.0.0", "0.0.0.0", true},
		{"192.000.002.001", "", false},
		{"[192.0.2.1]", "", false},
		{"::ffff:192.0.2.1", "", false},
		{"fe80::1%eth0", "", false},
		{"[fe80::1%25eth0]", "", false},
		{"[::1]:443", "", false},
		{"::1.", "", false},
		{"[::1", "", false},
		{"example.com", "", false},
		{"1.2.3", "", false},
		{"", "", false},
		{"[]", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			got, ok := NormalizeIP(tt.host)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("NormalizeIP(%q) = %q, %v; want %q, %v", tt.host, got, ok, tt.want, tt.ok)
			}
			if !ok {
				return
			}
			// The normalised form is the entry's, and matches the host.
			m, err := New([]string{tt.host})
			if err != nil {
				t.Fatalf("New(%q): %v", tt.host, err)
			}
			if e := m.Entries()[0]; e != got {
				t.Errorf("New(%q).Entries() = %q, NormalizeIP gives %q", tt.host, e, got)
			}
			if !m.Match(tt.host) || !m.Match(got) {
				t.Errorf("entry %q does not match %q or %q", tt.host, tt.host, got)
			}
		})
	}
}

func ExampleNormalizeIP() {
	for _, host := range []string{"[2001:DB8:0::1]", "192.0.2.1", "fe80::1%eth0", "example.com"} {
		fmt.Println(NormalizeIP(host))
	}
	// Output:
	// 2001:db8::1 true
	// 192.0.2.1 true
	//  false
	//  false
}

func ExampleMatcher_Match() {
	m, err := New([]string{"*.example.com", "example.*", "Bücher.example"})
	if err != nil {
		panic(err)
	}
	for _, host := range []string{"a.b.example.com", "example.com", "example.co.uk", "xn--bcher-kva.example", "a.example.org"} {
		fmt.Println(host, m.Match(host))
	}
	// Output:
	// a.b.example.com true
	// example.com true
	// example.co.uk true
	// xn--bcher-kva.example true
	// a.example.org false
}
