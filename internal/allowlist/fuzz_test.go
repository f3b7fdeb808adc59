package allowlist

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// fuzzSeeds are entries and hosts worth mutating: every kind of entry, and the
// edges of the syntax (ports, dots, hyphens, IPv4, IPv6, IDN, lengths, bytes
// that idna treats specially).
var fuzzSeeds = []string{
	"", ".", "*", "*.", "..", "example.com", "EXAMPLE.COM.", "*.example.com", "example.*",
	"www.example.*", "a.*.com", "*.*", "example.com:443", "[::1]", "::1", "192.0.2.1",
	"1.2.3", "256.1.1.1", "*.1.2.3.4", "-a.example", "a-.example", "a_b.example",
	"bücher.example", "xn--bcher-kva.example", "*.bücher.example", "münchen.*", "xn--zz.example",
	"ｅｘａｍｐｌｅ．ｃｏｍ", "a\u00ad.example", "ex\u200bample.com", "a.b\u3002", "\u3002example.com",
	"\xff.example", "\ufffd.example", "ß.de", "שלום.example", "١٢٣.example", "r3---sn-ü.de",
	strings.Repeat("a", 63) + ".example", strings.Repeat("a", 64) + ".example",
	strings.Repeat("a.", 126) + "a",
	// IPv6: spellings, zones, ports, mapped and embedded IPv4, wildcards.
	"2001:db8::1", "2001:DB8:0:0:0:0:0:1", "[2001:db8::1]", "::", "[::]", "fe80::1%eth0",
	"[fe80::1%25eth0]", "::ffff:192.0.2.1", "::192.0.2.1", "64:ff9b::192.0.2.1", "[::1]:443",
	"2001:db8::*", "*.2001:db8::1", "2001:db8::1.*", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9",
	"2001:db8::g", "[2001:db8::1", "::1.", "0000:0000:0000:0000:0000:0000:255.255.255.255",
}

func FuzzMatch(f *testing.F) {
	for _, e := range fuzzSeeds {
		f.Add(e, e)
		f.Add(e, "x."+e)
		f.Add(e, strings.ToUpper(e))
	}
	f.Add("*.example.com", "a.b.example.com")
	f.Add("example.*", "example.co.uk")
	f.Fuzz(func(t *testing.T, entry, host string) {
		m, err := New([]string{entry})
		if (err == nil) != (Validate(entry) == nil) {
			t.Fatalf("New and Validate disagree on %q: %v", entry, err)
		}
		if err != nil {
			if m.Match(host) {
				t.Fatalf("nil Matcher matched %q", host)
			}
			return
		}
		got := m.Match(host)
		if isASCII(host) && m.Match(strings.ToUpper(host)) != got {
			t.Errorf("entry %q: Match(%q) = %v but Match(%q) = %v", entry, host, got, strings.ToUpper(host), !got)
		}
		// An IP address host matches as its normalised form, which is an
		// entry's own form, matching the host.
		if ip, ok := NormalizeIP(host); ok {
			if m.Match(ip) != got {
				t.Errorf("entry %q: Match(%q) = %v but Match(%q) = %v (its NormalizeIP)", entry, host, got, ip, !got)
			}
			e, err := New([]string{ip})
			if err != nil || e.Entries()[0] != ip || !e.Match(host) {
				t.Errorf("host %q normalised to %q: New = %v, %v; it must be an entry of that form matching the host", host, ip, e.Entries(), err)
			}
		}

		norm := m.Entries()[0]
		if strings.Contains(norm, "*") {
			return
		}
		// An exact entry matches itself, as written and normalised.
		for _, h := range []string{entry, norm, strings.ToUpper(norm)} {
			if !m.Match(h) {
				t.Errorf("exact entry %q (normalised %q) does not match %q", entry, norm, h)
			}
		}
		// A leftmost wildcard over it matches one label more, not itself.
		if w, err := New([]string{"*." + entry}); err == nil {
			if h := "x." + entry; !w.Match(h) {
				t.Errorf("entry %q does not match %q", "*."+entry, h)
			}
			if w.Match(entry) {
				t.Errorf("entry %q matches its own suffix %q", "*."+entry, entry)
			}
		}
		// A rightmost wildcard after it matches one label more, not itself.
		if p, err := New([]string{entry + ".*"}); err == nil {
			if h := entry + ".x"; !p.Match(h) {
				t.Errorf("entry %q does not match %q", entry+".*", h)
			}
			if p.Match(entry) {
				t.Errorf("entry %q matches its own prefix %q", entry+".*", entry)
			}
		}
	})
}

func FuzzValidate(f *testing.F) {
	for _, e := range fuzzSeeds {
		f.Add(e)
	}
	f.Fuzz(func(t *testing.T, entry string) {
		err := Validate(entry)
		if err != nil {
			if prefix := fmt.Sprintf("domain %q: ", entry); !strings.HasPrefix(err.Error(), prefix) {
				t.Fatalf("Validate(%q) = %q, want it to start with %q", entry, err, prefix)
			}
			return
		}
		m, err := New([]string{entry})
		if err != nil {
			t.Fatalf("Validate(%q) = nil but New: %v", entry, err)
		}
		norm := m.Entries()[0]
		if !isASCII(norm) || norm != strings.ToLower(norm) || strings.HasSuffix(norm, ".") || strings.ContainsAny(norm, "[]%") {
			t.Errorf("entry %q normalised to %q", entry, norm)
		}
		// An IPv6 entry is an address without zone, not IPv4-mapped, in
		// netip's form, which NormalizeIP gives too.
		if strings.Contains(norm, ":") {
			ip, err := netip.ParseAddr(norm)
			if err != nil || !ip.Is6() || ip.Is4In6() || ip.Zone() != "" || ip.String() != norm {
				t.Errorf("entry %q normalised to %q, not an IPv6 address in netip's form: %v", entry, norm, err)
			}
			if got, ok := NormalizeIP(entry); !ok || got != norm {
				t.Errorf("entry %q normalised to %q, but NormalizeIP gives %q, %v", entry, norm, got, ok)
			}
		}
		// Normalising is idempotent.
		again, err := New([]string{norm})
		if err != nil {
			t.Fatalf("entry %q normalised to %q, which is invalid: %v", entry, norm, err)
		}
		if got := again.Entries()[0]; got != norm {
			t.Errorf("entry %q normalised to %q, then to %q", entry, norm, got)
		}
	})
}
