package allowlist

import (
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// refLabel is one label of a host name: letters, digits and inner hyphens,
// 1 to 63 octets.
var refLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// refNormalize is a slow, independent statement of what Match accepts as
// a host: at most maxRawLen bytes, one trailing dot dropped, an IDN in its
// A-label form, lower case, labels as refLabel, at most 253 octets.
func refNormalize(host string) (string, bool) {
	if len(host) > maxRawLen {
		return "", false
	}
	name := strings.TrimSuffix(host, ".")
	for i := 0; i < len(name); i++ {
		if name[i] >= utf8.RuneSelf {
			if !utf8.ValidString(name) {
				return "", false
			}
			a, err := idna.Lookup.ToASCII(name)
			if err != nil {
				return "", false
			}
			name = a
			break
		}
	}
	name = strings.ToLower(name)
	if name == "" || len(name) > maxNameLen {
		return "", false
	}
	for _, l := range strings.Split(name, ".") {
		if !refLabel.MatchString(l) {
			return "", false
		}
	}
	return name, true
}

// refIPv6 is the address of host if Match takes it as an IPv6 address: in
// brackets or not, with a colon, as net.ParseIP reads it (no zone), not an
// IPv4-mapped address.
func refIPv6(host string) (net.IP, bool) {
	if len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	if !strings.Contains(host, ":") {
		return nil, false
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.To4() != nil {
		return nil, false
	}
	return ip, true
}

// refMatch is Match as a loop over the normalised entries: an exact entry
// matches itself; "*.s" matches names that end in ".s"; "p.*" matches names
// that start with "p."; a name whose last label is all digits (an IPv4
// address) is matched by exact entries only; an IPv6 address is matched by
// the exact IPv6 entry of the same 16 bytes only.
func refMatch(entries []string, host string) bool {
	if ip, ok := refIPv6(host); ok {
		for _, e := range entries {
			if strings.Contains(e, ":") && net.ParseIP(e).Equal(ip) {
				return true
			}
		}
		return false
	}
	name, ok := refNormalize(host)
	if !ok {
		return false
	}
	numeric := allDigits(name[strings.LastIndexByte(name, '.')+1:])
	for _, e := range entries {
		switch {
		case strings.HasPrefix(e, "*."):
			if !numeric && strings.HasSuffix(name, e[1:]) {
				return true
			}
		case strings.HasSuffix(e, ".*"):
			if !numeric && strings.HasPrefix(name, e[:len(e)-1]) && len(name) > len(e)-1 {
				return true
			}
		case name == e:
			return true
		}
	}
	return false
}

// FuzzMatchReference checks the O(labels) matcher against refMatch, a loop
// over the entries, for lists of up to three entries (the invalid ones
// left out, as New would refuse them) and the host given, one label more,
// upper case and with a trailing dot. It also checks that the normalised
// entries are distinct and each one is what New makes of it alone.
func FuzzMatchReference(f *testing.F) {
	for _, e := range fuzzSeeds {
		f.Add(e, "*.example.com", "example.*", e)
		f.Add("a.example.com", e, "*."+e, "x."+e)
	}
	f.Add("*.example.com", "example.*", "192.0.2.1", "example.192")
	f.Add("*.com", "a.*", "", "a.1")
	f.Add("*.b.example", "a.b.*", "A.B.Example", "a.b.example")
	f.Add("2001:db8::1", "[::1]", "*.example.com", "[2001:DB8:0:0:0:0:0:1]")
	f.Add("2001:db8::1", "::1", "192.0.2.1", "0:0:0:0:0:0:0:1")
	f.Add("::c000:201", "192.0.2.1", "example.*", "::ffff:192.0.2.1")
	f.Add("fe80::1", "example.*", "*.com", "fe80::1%eth0")
	f.Add("::1", "", "", "[::1]:443")
	f.Fuzz(func(t *testing.T, e1, e2, e3, host string) {
		var valid []string
		for _, e := range []string{e1, e2, e3} {
			if Validate(e) == nil {
				valid = append(valid, e)
			}
		}
		m, err := New(valid)
		if err != nil {
			t.Fatalf("New(%q): %v", valid, err)
		}
		entries := m.Entries()
		if m.Len() != len(entries) || len(slices.Compact(slices.Sorted(slices.Values(entries)))) != len(entries) {
			t.Fatalf("New(%q) has entries %q, Len %d", valid, entries, m.Len())
		}
		for _, e := range valid {
			one, _ := New([]string{e})
			if !slices.Contains(entries, one.Entries()[0]) {
				t.Fatalf("New(%q) = %q lacks %q, the form of %q", valid, entries, one.Entries()[0], e)
			}
		}
		for _, h := range []string{host, "x." + host, strings.ToUpper(host), host + "."} {
			if got, want := m.Match(h), refMatch(entries, h); got != want {
				t.Fatalf("entries %q: Match(%q) = %v, the reference says %v", entries, h, got, want)
			}
		}
	})
}
