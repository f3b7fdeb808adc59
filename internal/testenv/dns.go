package testenv

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DefaultDNSZone is the zone StartDNS serves when DNSOptions.Zone is empty.
const DefaultDNSZone = "dns01.test"

// DNSKeyName is the name of the TSIG key that StartDNS's server accepts
// dynamic updates with (DNSServer.KeyName), without trailing dot.
const DNSKeyName = "caddy-acme-test"

// DNSKeyAlg is the algorithm of the TSIG key (DNSServer.KeyAlg), in the form
// BIND's configuration and the rfc2136 provider's key_alg use.
const DNSKeyAlg = "hmac-sha256"

// DNSOptions configures StartDNS.
type DNSOptions struct {
	// Zone is the zone the server is authoritative for, without trailing
	// dot (one is tolerated). Empty means DefaultDNSZone.
	Zone string
}

// DNSServer is a running BIND 9 (named) on 127.0.0.1, authoritative for one
// zone, stopped (by PID) when the test that started it finishes. It is the
// DNS server of a DNS-01 test: the rfc2136 DNS provider writes the challenge
// records into it (RFC 2136 dynamic updates, signed with the TSIG key in
// KeyName, KeyAlg and Key), and Pebble validates against it
// (PebbleOptions.DNSServer).
//
// The zone has a SOA record, an NS record ns.<zone> whose A record is
// 127.0.0.1, an A record 127.0.0.1 at the apex and a wildcard A record
// *.<zone> → 127.0.0.1, so every name in the zone resolves to 127.0.0.1 —
// except, as RFC 4592 wants it, a name that exists only because records
// exist below it: while _acme-challenge.x.<zone> holds a TXT record, x.<zone>
// has no A record. The server does not recurse: it answers REFUSED for names
// outside the zone. Every TTL is 1 second.
//
// Caddy's DNS challenge must be given Addr as its resolver ("resolvers":
// [Addr]); otherwise certmagic's propagation check asks the system's
// resolver and the zone's name server on port 53.
type DNSServer struct {
	// Addr is the host:port of the server, 127.0.0.1:<port>, serving UDP
	// and TCP. It is the "server" of the rfc2136 provider (which needs the
	// port) and the value of PebbleOptions.DNSServer.
	Addr string

	// Zone is the zone the server is authoritative for, without trailing
	// dot, e.g. "dns01.test".
	Zone string

	// KeyName is the name of the TSIG key (DNSKeyName), without trailing
	// dot. The rfc2136 provider (github.com/libdns/rfc2136 v1.0.1, Caddy
	// config key "key_name") accepts it with or without the dot: it applies
	// dns.Fqdn to it. Code using github.com/miekg/dns directly must use
	// dns.Fqdn(KeyName), both as the TsigSecret map key and in SetTsig.
	KeyName string

	// KeyAlg is the TSIG algorithm, "hmac-sha256" (DNSKeyAlg); the rfc2136
	// provider's "key_alg". miekg/dns calls it dns.HmacSHA256
	// ("hmac-sha256.").
	KeyAlg string

	// Key is the TSIG secret, standard base64 (with padding) of 32 random
	// bytes generated at every start; the rfc2136 provider's "key".
	Key string

	// Dir is the server's working directory: its configuration
	// (named.conf), the zone file and the zone's journal.
	Dir string

	proc *process
	log  *logBuffer
}

// StartDNS starts BIND 9's named as the current user on a free 127.0.0.1
// port (UDP and TCP) with its own configuration in a temporary directory
// (nothing of /etc/bind is used, and no control channel is opened), serving
// the zone described at DNSServer. Dynamic updates of the zone are allowed
// only when signed with the server's TSIG key; zone transfers (AXFR) are
// allowed from 127.0.0.1 without a key. It waits until named answers a SOA
// query for the zone over UDP and TCP (about 0.15 s on 2 cores).
//
// The test is skipped (or, with CI=true, failed) if named (Debian package
// bind9) is not installed; it fails if the server does not come up. The
// server is stopped in t.Cleanup.
func StartDNS(t testing.TB, opts DNSOptions) *DNSServer {
	t.Helper()
	zone := strings.ToLower(strings.TrimSuffix(opts.Zone, "."))
	if zone == "" {
		zone = DefaultDNSZone
	}
	if _, ok := dns.IsDomainName(zone); !ok || strings.ContainsAny(zone, " \t\"\\;{}*") {
		t.Fatalf("testenv: StartDNS: invalid zone %q", opts.Zone)
	}
	bin := findNamed(t)

	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatalf("testenv: StartDNS: generating TSIG key: %v", err)
	}
	s := &DNSServer{
		Zone:    zone,
		KeyName: DNSKeyName,
		KeyAlg:  DNSKeyAlg,
		Key:     base64.StdEncoding.EncodeToString(secret),
		Dir:     t.TempDir(),
	}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		err = s.start(t, bin)
		if err == nil || !errors.Is(err, errPortInUse) {
			break
		}
		t.Logf("testenv: StartDNS attempt %d: %v; retrying with another port", attempt, err)
	}
	if err != nil {
		t.Fatalf("testenv: StartDNS: %v", err)
	}
	return s
}

// findNamed returns the path of named: from BinDirs or $PATH like
// LookupBinary, else /usr/sbin/named (not in the $PATH of most non-root
// users). If it is missing, the test is skipped, or failed with CI=true.
func findNamed(t testing.TB) string {
	t.Helper()
	if p, err := LookupBinary("named"); err == nil {
		return p
	}
	const sbin = "/usr/sbin/named"
	if fi, err := os.Stat(sbin); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return sbin
	}
	msg := fmt.Sprintf("testenv: named not found in %s, $PATH or /usr/sbin; install Debian's bind9 package (apt-get install bind9)",
		strings.Join(BinDirs(), ", "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
		return ""
	}
	t.Skip(msg)
	return ""
}

// start is one attempt at starting named on a fresh port. On failure it
// stops the process.
func (s *DNSServer) start(t testing.TB, bin string) (err error) {
	port := FreePort(t)
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.log = &logBuffer{} // fresh per attempt

	// Remove what an earlier attempt left (journal, managed keys).
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(s.Dir, e.Name())); err != nil {
			return err
		}
	}
	zoneFile := filepath.Join(s.Dir, "zone.db")
	if err := os.WriteFile(zoneFile, []byte(s.zoneFile()), 0o600); err != nil {
		return err
	}
	conf := filepath.Join(s.Dir, "named.conf")
	if err := os.WriteFile(conf, []byte(s.namedConf(port, zoneFile)), 0o600); err != nil {
		return err
	}

	// No -u: named keeps running as the current user (root in CI), which
	// owns the directory; the bind user could not read it.
	proc, err := startProcess("named", bin, []string{"-g", "-4", "-n", "1", "-c", conf}, nil, s.log)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			proc.stop()
		}
	}()
	if err := s.wait(proc); err != nil {
		return err
	}
	s.proc = proc
	t.Cleanup(proc.stop)
	return nil
}

// namedConf returns named's configuration: every file in s.Dir, only
// 127.0.0.1:port, no recursion, no control channel.
func (s *DNSServer) namedConf(port int, zoneFile string) string {
	q := strconv.Quote
	return fmt.Sprintf(`options {
	directory %[1]s;
	pid-file none;
	session-keyfile %[2]s;
	managed-keys-directory %[1]s;
	bindkeys-file %[3]s;
	listen-on port %[4]d { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	notify no;
	dnssec-validation no;
	allow-query { any; };
	allow-transfer { 127.0.0.1; };
};

controls { };

key %[5]s {
	algorithm %[6]s;
	secret %[7]s;
};

zone %[8]s {
	type primary;
	file %[9]s;
	allow-update { key %[5]s; };
};
`, q(s.Dir), q(filepath.Join(s.Dir, "session.key")), q(filepath.Join(s.Dir, "bind.keys")), port,
		q(s.KeyName), s.KeyAlg, q(s.Key), q(s.Zone), q(zoneFile))
}

// zoneFile returns the zone's initial contents.
func (s *DNSServer) zoneFile() string {
	z := s.Zone + "."
	return fmt.Sprintf(`$TTL 1
$ORIGIN %[1]s
@	IN	SOA	ns.%[1]s hostmaster.%[1]s 1 3600 600 86400 1
@	IN	NS	ns.%[1]s
@	IN	A	127.0.0.1
ns	IN	A	127.0.0.1
*	IN	A	127.0.0.1
`, z)
}

// dnsPortInUse reports whether named's output says its port was taken: it
// exits if it cannot bind UDP, and logs but keeps running without TCP.
func dnsPortInUse(out string) bool {
	return strings.Contains(out, "address in use") ||
		strings.Contains(out, "address already in use") ||
		strings.Contains(out, "unable to listen on any configured interfaces")
}

// dnsFailure describes named failing to come up, with the tail of its
// output, wrapping errPortInUse when that was the cause.
func dnsFailure(proc *process, what string, cause error) error {
	err := processFailure(proc, what, cause)
	if dnsPortInUse(proc.out.String()) && !errors.Is(err, errPortInUse) {
		return fmt.Errorf("%w: %w", errPortInUse, err)
	}
	return err
}

// wait waits until named answers an authoritative SOA query for the zone
// over UDP and over TCP.
func (s *DNSServer) wait(proc *process) error {
	const timeout = 15 * time.Second
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		if ok, werr := proc.exited(); ok {
			return dnsFailure(proc, "exited during start-up", werr)
		}
		if dnsPortInUse(proc.out.String()) {
			return dnsFailure(proc, "could not bind", errors.New("address in use"))
		}
		lastErr = nil
		for _, network := range []string{"udp", "tcp"} {
			if err := s.probeSOA(network); err != nil {
				lastErr = fmt.Errorf("SOA query over %s: %w", network, err)
				break
			}
		}
		if lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return dnsFailure(proc, fmt.Sprintf("did not answer at %s within %s", s.Addr, timeout), lastErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// probeSOA queries the zone's SOA record over network ("udp" or "tcp").
func (s *DNSServer) probeSOA(network string) error {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(s.Zone), dns.TypeSOA)
	c := &dns.Client{Net: network, Timeout: time.Second}
	r, _, err := c.Exchange(m, s.Addr)
	if err != nil {
		return err
	}
	if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
		return fmt.Errorf("unexpected answer (rcode %s, authoritative %t):\n%s", dns.RcodeToString[r.Rcode], r.Authoritative, r)
	}
	if _, ok := r.Answer[0].(*dns.SOA); !ok {
		return fmt.Errorf("answer is not a SOA record: %s", r.Answer[0])
	}
	return nil
}

// TXT returns the values of the TXT records of name (absolute, with or
// without trailing dot, e.g. "_acme-challenge.www.dns01.test"), queried over
// TCP, one string per record (a record's character-strings concatenated),
// sorted. It returns nil if name has no TXT record or does not exist; the
// test fails on any other error.
func (s *DNSServer) TXT(t testing.TB, name string) []string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, s.Addr)
	if err != nil {
		t.Fatalf("testenv: TXT query for %s at %s: %v", name, s.Addr, err)
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		t.Fatalf("testenv: TXT query for %s at %s: %s", name, s.Addr, dns.RcodeToString[r.Rcode])
	}
	var values []string
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			values = append(values, strings.Join(txt.Txt, ""))
		}
	}
	slices.Sort(values)
	return values
}

// Records returns every record of the zone, in presentation format (as
// dns.RR's String method writes it), read by a zone transfer (AXFR) over TCP.
// The SOA record, which a transfer sends first and last, is listed once.
func (s *DNSServer) Records(t testing.TB) []string {
	t.Helper()
	rrs := s.transfer(t)
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, rr.String())
	}
	return out
}

// ChallengeRecords returns the zone's DNS-01 challenge records, the TXT
// records whose owner name starts with the label "_acme-challenge", as
// "<owner> <value>" (owner with trailing dot), read by a zone transfer.
// A test asserts that it is empty once the challenges are cleaned up.
func (s *DNSServer) ChallengeRecords(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, rr := range s.transfer(t) {
		txt, ok := rr.(*dns.TXT)
		if !ok || !strings.HasPrefix(strings.ToLower(txt.Hdr.Name), "_acme-challenge.") {
			continue
		}
		out = append(out, txt.Hdr.Name+" "+strings.Join(txt.Txt, ""))
	}
	slices.Sort(out)
	return out
}

// transfer reads the whole zone by AXFR, the closing SOA left out.
func (s *DNSServer) transfer(t testing.TB) []dns.RR {
	t.Helper()
	m := new(dns.Msg)
	m.SetAxfr(dns.Fqdn(s.Zone))
	tr := &dns.Transfer{DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second}
	envs, err := tr.In(m, s.Addr)
	if err != nil {
		t.Fatalf("testenv: zone transfer of %s from %s: %v", s.Zone, s.Addr, err)
	}
	var rrs []dns.RR
	for env := range envs {
		if env.Error != nil {
			t.Fatalf("testenv: zone transfer of %s from %s: %v", s.Zone, s.Addr, env.Error)
		}
		rrs = append(rrs, env.RR...)
	}
	if n := len(rrs); n > 1 && rrs[n-1].Header().Rrtype == dns.TypeSOA {
		rrs = rrs[:n-1]
	}
	return rrs
}

// RFC2136Provider returns the configuration of Caddy's rfc2136 DNS provider
// module (github.com/caddy-dns/rfc2136, which wraps
// github.com/libdns/rfc2136) for this server, for the "provider" object of
// a DNS challenge in a Caddy JSON config: name, key_name, key_alg, key and
// server.
func (s *DNSServer) RFC2136Provider() map[string]any {
	return map[string]any{
		"name":     "rfc2136",
		"key_name": s.KeyName,
		"key_alg":  s.KeyAlg,
		"key":      s.Key,
		"server":   s.Addr,
	}
}

// Log returns named's output so far, for debugging.
func (s *DNSServer) Log() string { return s.log.String() }
