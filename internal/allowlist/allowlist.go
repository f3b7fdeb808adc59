// Package allowlist implements the domain allowlist of caddy-acme: the Kong
// ACME plugin's `domains` field, validated with Kong's rules and matched the
// way Kong documents it, with Kong's defects fixed.
//
// An entry is one of:
//
//   - an exact host name or IPv4 address ("api.example.com", "192.0.2.1"),
//     which matches that name only;
//   - an exact IPv6 address ("2001:db8::1", also written "2001:DB8:0:0:0:0:0:1"
//     or "[2001:db8::1]"), which matches that address in any spelling. It
//     must have no zone ("fe80::1%eth0") and no port, and must not be an
//     IPv4-mapped address ("::ffff:192.0.2.1": the IPv4 address is written
//     instead). Whether IPv6 addresses may be served at all is the app's
//     rule (enable_ipv6), not this package's;
//   - a leftmost wildcard ("*.example.com"), which matches every name with
//     at least one more label below the suffix ("a.example.com",
//     "a.b.example.com"), but not "example.com" itself nor "badexample.com";
//   - a rightmost wildcard ("example.*"), which matches the prefix followed by
//     one or more labels ("example.com", "example.co.uk"), but not "example"
//     alone, "a.example.com" nor "examplex.com". Kong accepts this form and
//     never matches it; here it works.
//
// Entries and hosts are compared case-insensitively (Kong never matched an
// entry written in upper case), internationalised names are compared in
// their punycode (A-label) form, and one trailing dot is ignored. IPv6
// addresses are compared in their netip.Addr.String form (lower case,
// compressed, no brackets; see NormalizeIP). IPv4 and IPv6 addresses are
// matched by exact entries only, never by a wildcard.
//
// Matching costs a number of map lookups bounded by the number of labels in
// the host, whatever the number of entries, and does not allocate for an
// ASCII host, so it can run on every TLS handshake.
package allowlist

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Matcher reports whether a host name is allowed by a list of entries. It is
// immutable once built by New and safe for concurrent use. A nil *Matcher
// allows nothing.
type Matcher struct {
	exact    map[string]struct{} // "example.com", "192.0.2.1", "2001:db8::1"
	suffixes map[string]struct{} // "example.com" for "*.example.com"
	prefixes map[string]struct{} // "example" for "example.*"
	entries  []string            // distinct normalised entries, in input order
}

// New validates every entry with Validate and builds a Matcher from their
// normalised forms. The first invalid entry fails the whole list; its error
// names its index and the entry. Duplicates, also those that differ only in
// case, punycode encoding or a trailing dot, or IPv6 addresses written
// differently ("2001:DB8:0::1", "[2001:db8::1]"), are kept once. An empty
// list gives a Matcher that matches nothing.
func New(entries []string) (*Matcher, error) {
	m := &Matcher{
		exact:    make(map[string]struct{}),
		suffixes: make(map[string]struct{}),
		prefixes: make(map[string]struct{}),
	}
	for i, entry := range entries {
		k, name, err := parse(entry)
		if err != nil {
			return nil, fmt.Errorf("domains[%d]: %w", i, err)
		}
		var set map[string]struct{}
		var norm string
		switch k {
		case exact:
			set, norm = m.exact, name
		case suffix:
			set, norm = m.suffixes, "*."+name
		case prefix:
			set, norm = m.prefixes, name+".*"
		}
		if _, dup := set[name]; dup {
			continue
		}
		set[name] = struct{}{}
		m.entries = append(m.entries, norm)
	}
	return m, nil
}

// Validate checks one element of Kong's `domains` field. It applies Kong's
// rules, with Kong's messages for misplaced wildcards: at most one "*", which
// must be the whole leftmost or rightmost label, and once it is replaced by a
// label the entry must be a valid host name without a port. It also rejects
// what Kong lets through but can never be served: a bare "*", empty labels,
// labels longer than 63 octets, names longer than 253 octets, characters
// other than letters, digits and hyphens (underscores included), hyphens at
// the start or end of a label, an all-numeric rightmost label that is not
// part of an exact IPv4 address, and internationalised names or punycode
// labels that fail IDNA (UTS #46 lookup) processing. One trailing dot is
// allowed and ignored.
//
// An exact IPv6 address is valid, bracketed or not, in any case, compressed
// or not; it is refused with a zone ("fe80::1%eth0"), a port
// ("[::1]:443"), a wildcard ("2001:db8::*", "*.2001:db8::1") or a trailing
// dot, and when it is an IPv4-mapped address ("::ffff:192.0.2.1", to be
// written "192.0.2.1"). Validate does not apply the app's enable_ipv6 rule.
//
// The error names the entry and the reason, for example: domain "a.*.com":
// invalid wildcard: must be placed at leftmost or rightmost label.
func Validate(entry string) error {
	_, _, err := parse(entry)
	return err
}

// Match reports whether host, a TLS server name or an HTTP Host header value
// without a port, is allowed. The host is normalised as entries are: lower
// case, one trailing dot ignored, internationalised names converted to
// punycode, an IPv6 address (bracketed or not, in any case, compressed or
// not) in its netip.Addr.String form. A host that is neither a valid host
// name nor an IP address (a port, an empty label, an IPv6 zone, …) is never
// allowed, nor is an IPv4-mapped IPv6 address.
func (m *Matcher) Match(host string) bool {
	if m == nil || len(m.entries) == 0 {
		return false
	}
	var buf [maxNameLen]byte
	if n, ok := normalizeHost(host, &buf); ok {
		return m.lookup(buf[:n])
	}
	if ip, ok := parseIPv6Host(host); ok {
		// Exact entries only; the form is at most 39 bytes, buf holds it.
		_, found := m.exact[string(ip.AppendTo(buf[:0]))]
		return found
	}
	return false
}

// NormalizeIP reports whether host is an IP address that Match would look
// up, and returns it in the form of the entries: the netip.Addr.String form
// (an IPv6 address in lower case, compressed, without brackets). An IPv4
// address is dotted decimal without leading zeros, one trailing dot
// ignored; an IPv6 address may be bracketed, in any case, compressed or
// not, but has no zone and is not IPv4-mapped. Anything else, host names
// included, gives false.
//
// It is for the app, which keys storage, logs and its own IPv4/IPv6 rule
// by the name it matched: "2001:DB8:0::1" and "[2001:db8::1]" are one
// address, "2001:db8::1", as an entry and as a host.
func NormalizeIP(host string) (string, bool) {
	if ip, ok := parseIPv6Host(host); ok {
		return ip.String(), true
	}
	if len(host) > maxRawLen {
		return "", false
	}
	if ip, err := netip.ParseAddr(strings.TrimSuffix(host, ".")); err == nil && ip.Is4() {
		return ip.String(), true
	}
	return "", false
}

// Len returns the number of distinct normalised entries.
func (m *Matcher) Len() int {
	if m == nil {
		return 0
	}
	return len(m.entries)
}

// Entries returns the distinct normalised entries (lower case, punycode, no
// trailing dot) in the order they were first given. The slice is a copy.
func (m *Matcher) Entries() []string {
	if m == nil {
		return nil
	}
	return append([]string(nil), m.entries...)
}

// lookup reports whether the normalised, valid host name is allowed: one
// lookup in the exact set, then, at each dot, one in the suffix set (for the
// labels right of it) and one in the prefix set (for those left of it).
func (m *Matcher) lookup(name []byte) bool {
	if _, ok := m.exact[string(name)]; ok {
		return true
	}
	last := len(name) - 1
	for last >= 0 && name[last] != '.' {
		last--
	}
	if allDigits(name[last+1:]) {
		// An IPv4 address, or a name no valid entry can cover: exact only.
		return false
	}
	for i, c := range name[:last+1] {
		if c != '.' {
			continue
		}
		if _, ok := m.suffixes[string(name[i+1:])]; ok {
			return true
		}
		if _, ok := m.prefixes[string(name[:i])]; ok {
			return true
		}
	}
	return false
}

// kind is the shape of an entry.
type kind uint8

const (
	exact  kind = iota // example.com
	suffix             // *.example.com
	prefix             // example.*
)

// parse validates entry and returns its kind and normalised name, without
// the wildcard label.
func parse(entry string) (kind, string, error) {
	fail := func(reason string) (kind, string, error) {
		return exact, "", fmt.Errorf("domain %q: %s", entry, reason)
	}
	if entry == "" {
		return fail("must not be empty")
	}
	if len(entry) > maxRawLen {
		return fail(fmt.Sprintf("longer than %d bytes", maxRawLen))
	}
	if strings.Count(entry, "*") > 1 {
		return fail(errManyWildcards)
	}
	if i := strings.LastIndexByte(entry, ':'); i >= 0 {
		if ip, isIP, reason := parseIPv6Entry(entry); isIP {
			if reason != "" {
				return fail(reason)
			}
			return exact, ip, nil
		}
		if port := entry[i+1:]; port != "" && allDigits(port) {
			return fail("must not have a port")
		}
		// Any other colon is reported as an invalid character below.
	}

	name := strings.TrimSuffix(entry, ".")
	k := exact
	switch {
	case name == "*":
		return fail(errWildcardPlace)
	case strings.HasPrefix(name, "*."):
		k = suffix
		name = wildcardLabel + name[1:]
	case strings.HasSuffix(name, ".*"):
		k = prefix
		name = name[:len(name)-1] + wildcardLabel
	case strings.Contains(name, "*"):
		return fail(errWildcardPlace)
	}

	if !isASCII(name) {
		if !utf8.ValidString(name) {
			// idna would turn each invalid byte into U+FFFD and succeed.
			return fail("invalid UTF-8")
		}
		a, err := idna.Lookup.ToASCII(name)
		if err != nil {
			return exact, "", fmt.Errorf("domain %q: invalid internationalized domain name: %w", entry, err)
		}
		name = a
	}
	var buf [maxNameLen]byte
	n, f, at := scan(name, &buf)
	if f != faultNone {
		return fail(describe(f, name, at))
	}
	name = string(buf[:n])

	lastLabel := name[strings.LastIndexByte(name, '.')+1:]
	if allDigits(lastLabel) {
		if k != exact || strings.Trim(name, "0123456789.") != "" {
			return fail("rightmost label must not be all-numeric (only an exact IPv4 address may end in digits)")
		}
		if ip, err := netip.ParseAddr(name); err != nil || !ip.Is4() {
			return fail("invalid IPv4 address")
		}
	}
	for label := range strings.SplitSeq(name, ".") {
		if !strings.HasPrefix(label, "xn--") {
			continue
		}
		if _, err := idna.Lookup.ToUnicode(label); err != nil {
			return exact, "", fmt.Errorf("domain %q: invalid punycode label %q: %w", entry, label, err)
		}
	}

	switch k {
	case suffix:
		if !strings.HasPrefix(name, wildcardLabel+".") {
			return fail(errWildcardPlace)
		}
		name = name[len(wildcardLabel)+1:]
	case prefix:
		if !strings.HasSuffix(name, "."+wildcardLabel) {
			return fail(errWildcardPlace)
		}
		name = name[:len(name)-len(wildcardLabel)-1]
	case exact:
	}
	return k, name, nil
}

// parseIPv6Entry reads an entry that has a colon as an IPv6 address. isIP
// false: the entry is not meant as one (it is a name with a port, or has a
// stray colon) and is left to the host name rules. isIP true: the entry is
// an IPv6 address, in brackets or not, or was meant as one; reason says why
// it is refused, or is empty and name is its normalised form.
func parseIPv6Entry(entry string) (name string, isIP bool, reason string) {
	s := entry
	bracketed := strings.HasPrefix(s, "[")
	if bracketed {
		end := strings.IndexByte(s, ']')
		switch {
		case end < 0:
			return "", true, `invalid IPv6 address: missing "]"`
		case end+1 < len(s) && s[end+1] == ':':
			return "", true, "must not have a port"
		case end+1 < len(s):
			return "", true, `invalid IPv6 address: text after "]"`
		}
		s = s[1:end]
	}
	if strings.Contains(s, "*") {
		for _, c := range []string{strings.ReplaceAll(s, "*", "0"), strings.TrimPrefix(s, "*."), strings.TrimSuffix(s, ".*")} {
			if ip, err := netip.ParseAddr(c); err == nil && ip.Is6() {
				return "", true, "invalid wildcard: IPv6 addresses are matched by exact entries only"
			}
		}
		if bracketed {
			return "", true, "invalid IPv6 address"
		}
		return "", false, ""
	}
	ip, err := netip.ParseAddr(s)
	switch {
	case err != nil || !ip.Is6():
		if bracketed || looksIPv6(s) {
			return "", true, "invalid IPv6 address"
		}
		return "", false, ""
	case ip.Zone() != "":
		return "", true, fmt.Sprintf("IPv6 zones are not allowed (%%%s)", ip.Zone())
	case ip.Is4In6():
		return "", true, fmt.Sprintf("IPv4-mapped IPv6 address: write the IPv4 address %s instead", ip.Unmap())
	}
	return ip.String(), true, ""
}

// looksIPv6 reports whether s, which is not an IPv6 address, was meant as
// one: two colons or more (no host name, with or without a port, has
// them), and before any zone only letters, digits, colons, dots and
// brackets.
func looksIPv6(s string) bool {
	if i := strings.IndexByte(s, '%'); i >= 0 {
		s = s[:i]
	}
	if strings.Count(s, ":") < 2 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == ':', c == '.', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}

// parseIPv6Host reads host, bracketed or not, as an IPv6 address without
// zone that is not IPv4-mapped. It allocates only when host is made of hex
// digits, colons and dots but is not an IPv6 address (netip's error).
func parseIPv6Host(host string) (netip.Addr, bool) {
	if len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	// The longest form is 45 bytes ("0000:…:0000:255.255.255.255"). A zone
	// ('%') is refused before parsing, as netip would intern it.
	if len(host) > maxIPv6Len || strings.IndexByte(host, ':') < 0 {
		return netip.Addr{}, false
	}
	for i := 0; i < len(host); i++ {
		switch c := host[i]; {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F', c == ':', c == '.':
		default:
			return netip.Addr{}, false
		}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Is6() || ip.Is4In6() || ip.Zone() != "" {
		return netip.Addr{}, false
	}
	return ip, true
}

// normalizeHost writes the normalised form of host into buf and reports its
// length, or false if host is not a valid host name. It allocates only for a
// host that is not ASCII.
func normalizeHost(host string, buf *[maxNameLen]byte) (int, bool) {
	if len(host) > maxRawLen {
		return 0, false
	}
	name := strings.TrimSuffix(host, ".")
	n, f, _ := scan(name, buf)
	if f == faultNonASCII {
		if !utf8.ValidString(name) {
			return 0, false
		}
		a, err := idna.Lookup.ToASCII(name)
		if err != nil {
			return 0, false
		}
		n, f, _ = scan(a, buf)
	}
	return n, f == faultNone
}

// fault is the first rule of host name syntax a name breaks.
type fault uint8

const (
	faultNone fault = iota
	faultNonASCII
	faultEmpty
	faultEmptyLabel
	faultChar
	faultHyphen
	faultLabelLen
	faultNameLen
)

// scan checks that s is an ASCII host name (letters, digits and hyphens in
// non-empty labels of at most 63 octets that neither begin nor end with a
// hyphen, at most 253 octets, no trailing dot) and writes it in lower case
// into dst. It returns the length, the first fault found and the index in s
// where it was found. A non-ASCII byte anywhere in s gives faultNonASCII,
// whatever else is wrong, so the caller may retry after IDNA conversion.
func scan(s string, dst *[maxNameLen]byte) (n int, f fault, at int) {
	if s == "" {
		return 0, faultEmpty, 0
	}
	labelStart := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			return 0, faultNonASCII, i
		}
		if f != faultNone {
			continue
		}
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '-':
			if i == labelStart {
				f, at = faultHyphen, i
				continue
			}
		case c == '.':
			if i == labelStart {
				f, at = faultEmptyLabel, i
				continue
			}
			if s[i-1] == '-' {
				f, at = faultHyphen, i-1
				continue
			}
			labelStart = i + 1
		default:
			f, at = faultChar, i
			continue
		}
		if c != '.' && i-labelStart >= maxLabelLen {
			f, at = faultLabelLen, i
			continue
		}
		if i >= maxNameLen {
			f, at = faultNameLen, i
			continue
		}
		dst[i] = c
	}
	switch {
	case f != faultNone:
		return 0, f, at
	case labelStart == len(s):
		return 0, faultEmptyLabel, len(s)
	case s[len(s)-1] == '-':
		return 0, faultHyphen, len(s) - 1
	}
	return len(s), faultNone, 0
}

// describe explains the fault scan found at index at of name.
func describe(f fault, name string, at int) string {
	switch f {
	case faultEmpty:
		return "must not be empty"
	case faultEmptyLabel:
		return "empty label (leading, trailing or repeated dot)"
	case faultChar:
		return fmt.Sprintf("invalid character %q in host name", rune(name[at]))
	case faultHyphen:
		return fmt.Sprintf("label %q must not begin or end with a hyphen", labelAt(name, at))
	case faultLabelLen:
		return fmt.Sprintf("label %q is longer than %d octets", labelAt(name, at), maxLabelLen)
	case faultNameLen:
		return fmt.Sprintf("longer than %d octets", maxNameLen)
	case faultNone, faultNonASCII:
	}
	return "invalid host name"
}

// labelAt returns the label of name that contains index at.
func labelAt(name string, at int) string {
	start := strings.LastIndexByte(name[:at], '.') + 1
	end := strings.IndexByte(name[at:], '.')
	if end < 0 {
		return name[start:]
	}
	return name[start : at+end]
}

// allDigits reports whether s is a non-empty run of ASCII digits.
func allDigits[T ~string | ~[]byte](s T) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isASCII reports whether s has no byte outside 7-bit ASCII.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

const (
	maxNameLen  = 253  // octets in a host name without the trailing dot (RFC 1035)
	maxLabelLen = 63   // octets in one label (RFC 1035)
	maxRawLen   = 1024 // bytes of input considered at all; bounds IDNA work on hostile input
	maxIPv6Len  = 64   // bytes of an IPv6 host considered at all (the longest valid one has 45)

	// wildcardLabel stands in for "*" while an entry is validated, as in Kong.
	wildcardLabel = "abc"

	// Kong's own messages (kong/db/schema/typedefs.lua, typedefs.hosts).
	errManyWildcards = "invalid wildcard: must have at most one wildcard"
	errWildcardPlace = "invalid wildcard: must be placed at leftmost or rightmost label"
)
