package testenv

import (
	"encoding/base64"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsQuery sends one query for name and type to s over network.
func dnsQuery(t *testing.T, s *DNSServer, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, s.Addr)
	if err != nil {
		t.Fatalf("%s query %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return r
}

// answerA returns the addresses of the A records in r's answer.
func answerA(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func TestDNSZone(t *testing.T) {
	t.Parallel()
	start := time.Now()
	s := StartDNS(t, DNSOptions{})
	t.Logf("StartDNS took %s", time.Since(start).Round(time.Millisecond))

	if host, _, err := net.SplitHostPort(s.Addr); err != nil || host != "127.0.0.1" {
		t.Errorf("Addr = %q, want 127.0.0.1:<port>", s.Addr)
	}
	if s.Zone != DefaultDNSZone || s.KeyName != DNSKeyName || s.KeyAlg != "hmac-sha256" {
		t.Errorf("Zone, KeyName, KeyAlg = %q, %q, %q", s.Zone, s.KeyName, s.KeyAlg)
	}
	if key, err := base64.StdEncoding.DecodeString(s.Key); err != nil || len(key) != 32 {
		t.Errorf("Key %q is not base64 of 32 bytes (err %v)", s.Key, err)
	}

	// Every name in the zone resolves to 127.0.0.1, over UDP and TCP.
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"dns01.test", "www.dns01.test", "a.b.DNS01.test", "ns.dns01.test"} {
			r := dnsQuery(t, s, network, name, dns.TypeA)
			if got := answerA(r); r.Rcode != dns.RcodeSuccess || !r.Authoritative || !slices.Equal(got, []string{"127.0.0.1"}) {
				t.Errorf("%s A %s: rcode %s, aa %t, addresses %v; want authoritative 127.0.0.1",
					network, name, dns.RcodeToString[r.Rcode], r.Authoritative, got)
			}
		}
	}
	if r := dnsQuery(t, s, "udp", "www.dns01.test", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("AAAA www.dns01.test: %s", r)
	}
	r := dnsQuery(t, s, "udp", "dns01.test", dns.TypeNS)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.NS).Ns != "ns.dns01.test." {
		t.Errorf("NS dns01.test: %s", r)
	}
	// No recursion: names elsewhere are refused.
	if r := dnsQuery(t, s, "udp", "example.com", dns.TypeA); r.Rcode != dns.RcodeRefused || r.RecursionAvailable {
		t.Errorf("A example.com: rcode %s, ra %t; want REFUSED without recursion", dns.RcodeToString[r.Rcode], r.RecursionAvailable)
	}

	if got := s.TXT(t, "_acme-challenge.www.dns01.test"); got != nil {
		t.Errorf("TXT of a fresh zone = %v", got)
	}
	if got := s.ChallengeRecords(t); len(got) != 0 {
		t.Errorf("ChallengeRecords of a fresh zone = %v", got)
	}
	recs := s.Records(t)
	if len(recs) != 5 || !strings.Contains(recs[0], "\tSOA\t") {
		t.Errorf("Records = %q, want SOA, NS and three A records", recs)
	}
	if !strings.Contains(s.Log(), "running") {
		t.Errorf("Log() lacks named's \"running\" line:\n%s", s.Log())
	}
	cfg := s.RFC2136Provider()
	if cfg["name"] != "rfc2136" || cfg["server"] != s.Addr || cfg["key"] != s.Key {
		t.Errorf("RFC2136Provider() = %v", cfg)
	}
}

func TestDNSZoneOption(t *testing.T) {
	t.Parallel()
	s := StartDNS(t, DNSOptions{Zone: "Other-Zone.TEST."})
	if s.Zone != "other-zone.test" {
		t.Errorf("Zone = %q, want other-zone.test", s.Zone)
	}
	if got := answerA(dnsQuery(t, s, "tcp", "x.other-zone.test", dns.TypeA)); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Errorf("A x.other-zone.test = %v", got)
	}
	if r := dnsQuery(t, s, "udp", "x.dns01.test", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("A x.dns01.test: rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
}

// sendUpdate sends a dynamic update, TSIG-signed with keyName/secret unless
// secret is empty, and returns the response (possibly with an error, e.g.
// when the response's signature cannot be verified).
func sendUpdate(t *testing.T, s *DNSServer, m *dns.Msg, keyName, secret string) (*dns.Msg, error) {
	t.Helper()
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	if secret != "" {
		c.TsigSecret = map[string]string{dns.Fqdn(keyName): secret}
		m.SetTsig(dns.Fqdn(keyName), dns.HmacSHA256, 300, time.Now().Unix())
	}
	r, _, err := c.Exchange(m, s.Addr)
	if r == nil && err == nil {
		t.Fatal("update: no response and no error")
	}
	return r, err
}

func txtRR(t *testing.T, name, value string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(dns.Fqdn(name) + ` 60 IN TXT "` + value + `"`)
	if err != nil {
		t.Fatal(err)
	}
	return rr
}

// TestDNSUpdateTSIG shows that named accepts dynamic updates signed with
// the server's TSIG key only.
func TestDNSUpdateTSIG(t *testing.T) {
	t.Parallel()
	s := StartDNS(t, DNSOptions{})
	const name = "_acme-challenge.www.dns01.test"

	// A wrong secret: NOTAUTH with TSIG error BADSIG, nothing added.
	wrong := make([]byte, 32)
	wrong[0] = 1
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(s.Zone))
	m.Insert([]dns.RR{txtRR(t, name, "wrong-key")})
	r, err := sendUpdate(t, s, m, s.KeyName, base64.StdEncoding.EncodeToString(wrong))
	if r == nil || r.Rcode != dns.RcodeNotAuth {
		t.Errorf("update with a wrong key: response %v, error %v; want NOTAUTH", r, err)
	} else if ts := r.IsTsig(); ts == nil || ts.Error != dns.RcodeBadSig {
		t.Errorf("update with a wrong key: TSIG %v, want error BADSIG", ts)
	}
	// An unknown key name: NOTAUTH (BADKEY).
	m = new(dns.Msg)
	m.SetUpdate(dns.Fqdn(s.Zone))
	m.Insert([]dns.RR{txtRR(t, name, "unknown-key")})
	if r, err := sendUpdate(t, s, m, "other-key", s.Key); r == nil || r.Rcode != dns.RcodeNotAuth {
		t.Errorf("update with an unknown key: response %v, error %v; want NOTAUTH", r, err)
	}
	// Unsigned: REFUSED.
	m = new(dns.Msg)
	m.SetUpdate(dns.Fqdn(s.Zone))
	m.Insert([]dns.RR{txtRR(t, name, "unsigned")})
	if r, err := sendUpdate(t, s, m, "", ""); err != nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("unsigned update: response %v, error %v; want REFUSED", r, err)
	}
	if got := s.TXT(t, name); got != nil {
		t.Fatalf("TXT %s after refused updates = %v, want none", name, got)
	}
	if got := s.ChallengeRecords(t); len(got) != 0 {
		t.Fatalf("ChallengeRecords after refused updates = %v, want none", got)
	}

	// The right key, with the key name as the rfc2136 provider sends it
	// (dns.Fqdn(KeyName)): added, visible at once.
	m = new(dns.Msg)
	m.SetUpdate(dns.Fqdn(s.Zone))
	m.Insert([]dns.RR{txtRR(t, name, "token-1"), txtRR(t, name, "token-2")})
	if r, err := sendUpdate(t, s, m, s.KeyName, s.Key); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("update with the right key: response %v, error %v\n%s", r, err, s.Log())
	}
	if got := s.TXT(t, name); !slices.Equal(got, []string{"token-1", "token-2"}) {
		t.Errorf("TXT %s = %v, want [token-1 token-2]", name, got)
	}
	want := []string{name + ". token-1", name + ". token-2"}
	if got := s.ChallengeRecords(t); !slices.Equal(got, want) {
		t.Errorf("ChallengeRecords = %q, want %q", got, want)
	}
	// The name above the challenge record is now an empty non-terminal: no
	// wildcard A record (documented on DNSServer).
	if got := answerA(dnsQuery(t, s, "udp", "www.dns01.test", dns.TypeA)); len(got) != 0 {
		t.Errorf("A www.dns01.test with a challenge record below = %v, want none (RFC 4592)", got)
	}

	// Deleting with the right key cleans up.
	m = new(dns.Msg)
	m.SetUpdate(dns.Fqdn(s.Zone))
	m.RemoveRRset([]dns.RR{txtRR(t, name, "")})
	if r, err := sendUpdate(t, s, m, s.KeyName, s.Key); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("delete with the right key: response %v, error %v", r, err)
	}
	if got := s.TXT(t, name); got != nil {
		t.Errorf("TXT %s after delete = %v", name, got)
	}
	if got := s.ChallengeRecords(t); len(got) != 0 {
		t.Errorf("ChallengeRecords after delete = %v", got)
	}
	if got := answerA(dnsQuery(t, s, "udp", "www.dns01.test", dns.TypeA)); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Errorf("A www.dns01.test after delete = %v, want 127.0.0.1", got)
	}
}

// TestDNSPortInUse checks the detection of a taken port in named's output
// (BIND 9.18's messages), which makes StartDNS retry with another port.
func TestDNSPortInUse(t *testing.T) {
	t.Parallel()
	for out, want := range map[string]bool{
		// UDP taken: named exits.
		"listening on IPv4 interface lo, 127.0.0.1#15354\ncreating IPv4 interface lo failed; interface ignored\nunable to listen on any configured interfaces\nexiting (due to fatal error)": true,
		// TCP taken: named logs it and keeps running without TCP.
		"listening on IPv4 interface lo, 127.0.0.1#15355\ncreating TCP socket: address in use\nrunning": true,
		"listening on IPv4 interface lo, 127.0.0.1#15356\nall zones loaded\nrunning":                    false,
	} {
		if got := dnsPortInUse(out); got != want {
			t.Errorf("dnsPortInUse(%q) = %t, want %t", out, got, want)
		}
	}
}
