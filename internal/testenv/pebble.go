package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// PebbleVersion is the Pebble release these helpers are written and tested
// against (installed by InstallCommand).
const PebbleVersion = "v2.10.3"

// PebbleOrderLogPattern matches the line Pebble (v2.10.3, wfe.NewOrder) logs
// once for every order it creates; Pebble.Orders counts these lines. The line
// carries only the order's ID, not its identifiers.
var PebbleOrderLogPattern = regexp.MustCompile(`Added order "([^"]+)" to the db`)

// PebbleOptions configures StartPebble.
type PebbleOptions struct {
	// HTTPPort is the port on 127.0.0.1 that Pebble connects to for HTTP-01
	// validation, normally the HTTP listener of the Caddy under test.
	// Required.
	HTTPPort int

	// TLSPort is the port on 127.0.0.1 that Pebble connects to for
	// TLS-ALPN-01 validation. If zero, a free port nobody listens on is used,
	// so TLS-ALPN-01 validation fails.
	TLSPort int

	// EAB maps external account key IDs to base64url-encoded (unpadded) HMAC
	// keys. If non-empty, Pebble requires external account binding for new
	// accounts and accepts exactly these keys.
	EAB map[string]string

	// ValidityPeriod is the lifetime of the certificates Pebble issues under
	// its profile "default" (rounded up to whole seconds). Zero means
	// Pebble's default (90 days). Without Profiles, "default" is Pebble's
	// only profile, so every order gets this lifetime.
	ValidityPeriod time.Duration

	// Profiles are ACME certificate profiles (draft-aaron-acme-profiles)
	// Pebble offers besides "default": profile name → lifetime of its
	// certificates (rounded up to whole seconds; zero means 90 days). The
	// directory's meta.profiles lists them all. An order picks one with its
	// "profile" field; Pebble (v2.10.3, wfe.NewOrder) rejects an unknown
	// name (invalidProfile) and, as deliberate chaos, gives an order that
	// names no profile a profile picked at random among all of them,
	// "default" included. So with Profiles set, a test that relies on a
	// certificate's lifetime must name the profile in its orders (e.g. the
	// ACME issuer's "profile"). The name "default" is reserved: use
	// ValidityPeriod.
	Profiles map[string]time.Duration

	// DNSServer, if set, is the host:port of the DNS server Pebble resolves
	// names with during validation (its -dnsserver), e.g. the Addr of a
	// StartDNS server for DNS-01 tests. No pebble-challtestsrv is started
	// then: Pebble.ChallSrvURL is empty and the methods that need it (such
	// as SetServFail) fail the test. Empty: StartPebble starts
	// pebble-challtestsrv, which resolves every name to 127.0.0.1.
	DNSServer string

	// AlternateRoots is the number of additional root certificates that
	// cross-sign Pebble's issuing intermediate (PEBBLE_ALTERNATE_ROOTS), i.e.
	// the number of alternate chains offered with each certificate.
	AlternateRoots int

	// ChainLength is the number of intermediates between leaf and root in
	// each chain (PEBBLE_CHAIN_LENGTH). Zero means Pebble's default of 1.
	ChainLength int

	// KeyAlgorithm is the key algorithm of Pebble's roots and intermediates:
	// "rsa", "ecdsa" or "mldsa". Empty means "ecdsa", which starts much faster
	// than Pebble's own default, "rsa" (RSA key generation takes seconds on a
	// loaded machine).
	KeyAlgorithm string
}

// Pebble is a running Pebble ACME CA, with a pebble-challtestsrv DNS server
// that resolves every name to 127.0.0.1 (A records only), or using the DNS
// server in PebbleOptions.DNSServer. It is stopped when the test that
// started it finishes.
//
// Clients reach the ACME API through DirectoryURL, which is served by a small
// recording reverse proxy in the test process in front of Pebble; the proxy
// notes the identifiers of every order Pebble creates (see OrdersFor). It
// preserves the Host header, so every URL Pebble hands out points at the
// proxy too.
type Pebble struct {
	// DirectoryURL is the ACME directory URL, https://127.0.0.1:<port>/dir.
	DirectoryURL string

	// ListenerCAPEM is the PEM-encoded throwaway CA certificate that signed
	// the TLS certificate of the ACME API and management API (valid for
	// 127.0.0.1, ::1 and localhost). Clients of those APIs must trust it.
	ListenerCAPEM []byte

	// ListenerCAFile is the path of a file containing ListenerCAPEM, e.g. for
	// the trusted roots of an ACME issuer in a Caddy JSON config.
	ListenerCAFile string

	// ManagementURL is the base URL of Pebble's management API,
	// https://127.0.0.1:<port> (no trailing slash), e.g. ManagementURL +
	// "/roots/0".
	ManagementURL string

	// ChallSrvURL is the base URL of pebble-challtestsrv's management API,
	// http://127.0.0.1:<port> (no trailing slash), which can for example add
	// DNS records (/add-a, /set-txt) or make lookups fail (/set-servfail).
	// It is empty when PebbleOptions.DNSServer is set (no
	// pebble-challtestsrv runs).
	ChallSrvURL string

	// DNSServer is the host:port of the DNS server Pebble resolves names
	// with: pebble-challtestsrv's, or PebbleOptions.DNSServer.
	DNSServer string

	// HTTPPort is the port HTTP-01 validation connects to (PebbleOptions.HTTPPort).
	HTTPPort int

	// TLSPort is the port TLS-ALPN-01 validation connects to.
	TLSPort int

	// ConfigFile is the path of Pebble's JSON configuration file.
	ConfigFile string

	numRoots      int
	client        *http.Client
	pebbleLog     *logBuffer
	challLog      *logBuffer
	procs         []*process // pebble-challtestsrv and Pebble, once started
	newOrderPath  string
	pebbleDirURL  string // Pebble's own directory URL, behind the proxy
	listenerTLS   tls.Certificate
	listenerCAPEM []byte
	proxy         *acmeProxy // the recording proxy behind DirectoryURL

	mu          sync.Mutex
	logOrderIDs []string // IDs from PebbleOrderLogPattern lines, in log order
}

// PebbleOrder is an order Pebble created, as seen by the recording proxy in
// its newOrder response.
type PebbleOrder struct {
	// ID is Pebble's order ID (the last path element of the order URL).
	ID string
	// Identifiers are the order's identifier values (DNS names, IP
	// addresses) as Pebble normalised them (DNS names lower-cased).
	Identifiers []string
	// Account is the URL of the ACME account that placed the order: the
	// "kid" of the newOrder request's JWS protected header.
	Account string
}

// errPortInUse marks start failures caused by a port that was taken between
// FreePort and the child process binding it; those are retried.
var errPortInUse = errors.New("port already in use")

// StartPebble starts pebble-challtestsrv (unless opts.DNSServer is set) and
// Pebble on free 127.0.0.1 ports and waits until both answer. Orders need a
// fresh validation every time (authorization reuse is off), validation does
// not sleep, and no nonces are rejected. The test is skipped (or, with CI=true, failed) if the binaries
// are not installed; it fails if the servers do not come up. Everything is
// stopped in t.Cleanup.
func StartPebble(t testing.TB, opts PebbleOptions) *Pebble {
	t.Helper()
	if opts.HTTPPort <= 0 {
		t.Fatalf("testenv: StartPebble: PebbleOptions.HTTPPort is required")
	}
	if opts.AlternateRoots < 0 || opts.ChainLength < 0 {
		t.Fatalf("testenv: StartPebble: AlternateRoots and ChainLength must not be negative")
	}
	for name, validity := range opts.Profiles {
		if name == "" || name == "default" || validity < 0 {
			t.Fatalf("testenv: StartPebble: invalid profile %q (%s): names must be non-empty and not \"default\" (use ValidityPeriod), lifetimes not negative", name, validity)
		}
	}
	if opts.DNSServer != "" {
		if _, _, err := net.SplitHostPort(opts.DNSServer); err != nil {
			t.Fatalf("testenv: StartPebble: PebbleOptions.DNSServer %q is not host:port: %v", opts.DNSServer, err)
		}
	}
	pebbleBin := FindBinary(t, "pebble")
	challBin := ""
	if opts.DNSServer == "" {
		challBin = FindBinary(t, "pebble-challtestsrv")
	}

	dir := t.TempDir()
	p := &Pebble{
		HTTPPort: opts.HTTPPort,
		TLSPort:  opts.TLSPort,
		numRoots: 1 + opts.AlternateRoots,
	}
	if p.TLSPort == 0 {
		p.TLSPort = FreePort(t)
	}
	if err := p.writeListenerCert(dir); err != nil {
		t.Fatalf("testenv: StartPebble: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.ListenerCAPEM)
	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
	}
	p.client = &http.Client{Transport: transport, Timeout: 10 * time.Second}
	t.Cleanup(transport.CloseIdleConnections)

	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		err = p.startProcesses(t, dir, pebbleBin, challBin, opts)
		if err == nil || !errors.Is(err, errPortInUse) {
			break
		}
		t.Logf("testenv: StartPebble attempt %d: %v; retrying with other ports", attempt, err)
	}
	if err != nil {
		t.Fatalf("testenv: StartPebble: %v", err)
	}
	if err := p.startProxy(t); err != nil {
		t.Fatalf("testenv: StartPebble: starting recording proxy: %v", err)
	}
	return p
}

// writeListenerCert creates a throwaway ECDSA CA and a certificate for
// 127.0.0.1, ::1 and localhost signed by it, and writes them to dir.
func (p *Pebble) writeListenerCert(dir string) error {
	ca, err := newTestCA("caddy-acme testenv Pebble listener CA")
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.issue("127.0.0.1", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		[]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback})
	if err != nil {
		return err
	}
	caPEM := ca.certPEM()
	p.ListenerCAFile = filepath.Join(dir, "listener-ca.pem")
	if err := os.WriteFile(p.ListenerCAFile, caPEM, 0o600); err != nil {
		return err
	}
	if err := writeCertFiles(dir, "listener", certPEM, keyPEM); err != nil {
		return err
	}
	p.listenerTLS, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	p.ListenerCAPEM = caPEM
	p.listenerCAPEM = bytes.Clone(caPEM)
	return nil
}

// pebbleConfig is Pebble's JSON configuration (the fields used here).
type pebbleConfig struct {
	Pebble struct {
		ListenAddress                  string                   `json:"listenAddress"`
		ManagementListenAddress        string                   `json:"managementListenAddress"`
		Certificate                    string                   `json:"certificate"`
		PrivateKey                     string                   `json:"privateKey"`
		HTTPPort                       int                      `json:"httpPort"`
		TLSPort                        int                      `json:"tlsPort"`
		OCSPResponderURL               string                   `json:"ocspResponderURL"`
		ExternalAccountBindingRequired bool                     `json:"externalAccountBindingRequired"`
		ExternalAccountMACKeys         map[string]string        `json:"externalAccountMACKeys,omitempty"`
		KeyAlgorithm                   string                   `json:"keyAlgorithm,omitempty"`
		Profiles                       map[string]pebbleProfile `json:"profiles,omitempty"`
	} `json:"pebble"`
}

type pebbleProfile struct {
	Description    string `json:"description"`
	ValidityPeriod uint64 `json:"validityPeriod"`
}

// startProcesses is one attempt at starting pebble-challtestsrv (unless
// opts.DNSServer is set) and Pebble on fresh ports. On failure it stops
// whatever it started.
func (p *Pebble) startProcesses(t testing.TB, dir, pebbleBin, challBin string, opts PebbleOptions) (err error) {
	if opts.DNSServer != "" {
		p.DNSServer, p.ChallSrvURL = opts.DNSServer, ""
	} else {
		dnsPort, challMgmtPort := FreePort(t), FreePort(t)
		p.DNSServer = net.JoinHostPort("127.0.0.1", strconv.Itoa(dnsPort))
		p.ChallSrvURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(challMgmtPort))
	}
	listenPort, mgmtPort := FreePort(t), FreePort(t)
	listenAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(listenPort))
	mgmtAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mgmtPort))
	p.ManagementURL = "https://" + mgmtAddr
	p.pebbleDirURL = "https://" + listenAddr + "/dir"

	// Fresh buffers per attempt, so that a failed attempt's output does not
	// confuse this one's checks.
	p.challLog = &logBuffer{}
	p.pebbleLog = &logBuffer{onLine: p.onPebbleLine}
	p.mu.Lock()
	p.logOrderIDs = nil
	p.mu.Unlock()

	var cfg pebbleConfig
	c := &cfg.Pebble
	c.ListenAddress = listenAddr
	c.ManagementListenAddress = mgmtAddr
	c.Certificate = filepath.Join(dir, "listener-cert.pem")
	c.PrivateKey = filepath.Join(dir, "listener-key.pem")
	c.HTTPPort = p.HTTPPort
	c.TLSPort = p.TLSPort
	c.OCSPResponderURL = ""
	c.ExternalAccountBindingRequired = len(opts.EAB) > 0
	c.ExternalAccountMACKeys = opts.EAB
	c.KeyAlgorithm = opts.KeyAlgorithm
	if c.KeyAlgorithm == "" {
		c.KeyAlgorithm = "ecdsa"
	}
	c.Profiles = pebbleProfiles(opts)
	cfgJSON, err := json.MarshalIndent(&cfg, "", "  ")
	if err != nil {
		return err
	}
	p.ConfigFile = filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(p.ConfigFile, cfgJSON, 0o600); err != nil {
		return err
	}

	var chall *process
	if challBin != "" {
		chall, err = startChallSrv(challBin, p.DNSServer, p.ChallSrvURL, "127.0.0.1", p.challLog)
		if err != nil {
			return err
		}
		defer func() {
			if err != nil {
				chall.stop()
			}
		}()
		if err := p.waitDNS(chall); err != nil {
			return err
		}
	}

	chainLength := ""
	if opts.ChainLength > 0 {
		chainLength = strconv.Itoa(opts.ChainLength)
	}
	peb, err := startProcess("pebble", pebbleBin, []string{
		"-config", p.ConfigFile,
		"-dnsserver", p.DNSServer,
		"-strict=false",
	}, []string{
		"PEBBLE_VA_NOSLEEP=1",
		"PEBBLE_WFE_NONCEREJECT=0",
		"PEBBLE_AUTHZREUSE=0",
		"PEBBLE_ALTERNATE_ROOTS=" + strconv.Itoa(opts.AlternateRoots),
		"PEBBLE_CHAIN_LENGTH=" + chainLength,
	}, p.pebbleLog)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			peb.stop()
		}
	}()
	if err := p.waitPebble(peb); err != nil {
		return err
	}
	// Cleanups run last-in first-out: Pebble stops before its DNS server.
	p.procs = nil
	if chall != nil {
		t.Cleanup(chall.stop)
		p.procs = append(p.procs, chall)
	}
	t.Cleanup(peb.stop)
	p.procs = append(p.procs, peb)
	return nil
}

// pebbleProfiles returns the "profiles" of Pebble's configuration for opts:
// nil (Pebble's own single "default" profile, 90 days) when neither
// ValidityPeriod nor Profiles is set, else "default" (ValidityPeriod) and
// every profile of opts.Profiles.
func pebbleProfiles(opts PebbleOptions) map[string]pebbleProfile {
	if opts.ValidityPeriod <= 0 && len(opts.Profiles) == 0 {
		return nil
	}
	secs := func(d time.Duration) uint64 {
		if d <= 0 {
			return 0 // Pebble's default, 90 days
		}
		return uint64((d + time.Second - 1) / time.Second)
	}
	profiles := map[string]pebbleProfile{
		"default": {Description: "testenv profile", ValidityPeriod: secs(opts.ValidityPeriod)},
	}
	for name, validity := range opts.Profiles {
		profiles[name] = pebbleProfile{Description: "testenv profile " + name, ValidityPeriod: secs(validity)}
	}
	return profiles
}

// CPUTime is the CPU time (user and system) that Pebble and its DNS server
// (pebble-challtestsrv; not a PebbleOptions.DNSServer) have used so far, for
// benchmarks that compare it with the client's. The ACME proxy that counts orders runs in the test process.
func (p *Pebble) CPUTime() (time.Duration, error) {
	var sum time.Duration
	for _, proc := range p.procs {
		d, err := proc.cpuTime()
		if err != nil {
			return 0, err
		}
		sum += d
	}
	return sum, nil
}

// processFailure describes a child process that failed to come up, with the
// tail of its output, wrapping errPortInUse when that was the cause.
func processFailure(proc *process, what string, cause error) error {
	out := proc.out.tail(30)
	err := fmt.Errorf("%s %s: %v\n--- last lines of %s output ---\n%s\n---", proc.name, what, cause, proc.name, out)
	if strings.Contains(out, "address already in use") {
		return fmt.Errorf("%w: %w", errPortInUse, err)
	}
	return err
}

// startChallSrv starts pebble-challtestsrv as a DNS server only (no
// challenge servers) on dnsServer (host:port), with its management API on
// mgmtURL (http://host:port). Names without A records of their own resolve
// to defaultIPv4 ("": do not resolve); no name has an AAAA record.
func startChallSrv(bin, dnsServer, mgmtURL, defaultIPv4 string, out *logBuffer) (*process, error) {
	return startProcess("pebble-challtestsrv", bin, []string{
		"-defaultIPv4", defaultIPv4,
		"-defaultIPv6", "",
		"-dnsserver", dnsServer,
		"-http01", "",
		"-https01", "",
		"-tlsalpn01", "",
		"-doh", "",
		"-management", strings.TrimPrefix(mgmtURL, "http://"),
	}, nil, out)
}

// challSrvFailed returns why pebble-challtestsrv cannot come up (it exited,
// or could not bind a port), or nil.
func challSrvFailed(chall *process) error {
	if ok, werr := chall.exited(); ok {
		return processFailure(chall, "exited during start-up", werr)
	}
	if strings.Contains(chall.out.String(), "address already in use") {
		return processFailure(chall, "could not bind", errors.New("address already in use"))
	}
	return nil
}

// waitDNS waits until pebble-challtestsrv answers A queries over TCP (which
// is what Pebble uses) with 127.0.0.1.
func (p *Pebble) waitDNS(chall *process) error {
	resolver := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", p.DNSServer)
		},
	}
	deadline := time.Now().Add(15 * time.Second)
	var lastErr error
	for {
		if err := challSrvFailed(chall); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		addrs, err := resolver.LookupIPAddr(ctx, "testenv-probe.example")
		cancel()
		if err == nil {
			if len(addrs) == 1 && addrs[0].IP.Equal(net.IPv4(127, 0, 0, 1)) {
				return nil
			}
			err = fmt.Errorf("probe name resolved to %v, want only 127.0.0.1", addrs)
		}
		lastErr = err
		if time.Now().After(deadline) {
			return processFailure(chall, "DNS server did not become ready in 15s", lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitPebble waits until Pebble's directory and management API answer, then
// reads the newOrder path from the directory.
func (p *Pebble) waitPebble(peb *process) error {
	const timeout = 60 * time.Second
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		if ok, werr := peb.exited(); ok {
			return processFailure(peb, "exited during start-up", werr)
		}
		dirBody, err := p.get(p.pebbleDirURL, 2*time.Second)
		if err == nil {
			_, err = p.get(p.ManagementURL+"/roots/0", 2*time.Second)
		}
		if err == nil {
			var dir map[string]any
			if err := json.Unmarshal(dirBody, &dir); err != nil {
				return processFailure(peb, "served an invalid directory", err)
			}
			newOrder, _ := dir["newOrder"].(string)
			u, err := url.Parse(newOrder)
			if err != nil || newOrder == "" {
				return processFailure(peb, "served a directory without newOrder", fmt.Errorf("newOrder=%q", newOrder))
			}
			p.newOrderPath = u.Path
			return nil
		}
		lastErr = err
		if strings.Contains(peb.out.String(), "address already in use") {
			return processFailure(peb, "could not bind", lastErr)
		}
		if time.Now().After(deadline) {
			return processFailure(peb, fmt.Sprintf("did not answer at %s within %s", p.pebbleDirURL, timeout), lastErr)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// get fetches u with the client trusting the listener CA and returns the
// body of a 200 response.
func (p *Pebble) get(u string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", u, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// onPebbleLine is called for every line Pebble writes.
func (p *Pebble) onPebbleLine(line string) {
	if m := PebbleOrderLogPattern.FindStringSubmatch(line); m != nil {
		p.mu.Lock()
		p.logOrderIDs = append(p.logOrderIDs, m[1])
		p.mu.Unlock()
	}
}

// startProxy starts the recording reverse proxy that serves DirectoryURL.
func (p *Pebble) startProxy(t testing.TB) error {
	target, err := url.Parse(p.pebbleDirURL)
	if err != nil {
		return err
	}
	target.Path = ""
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.listenerCAPEM)
	p.proxy = newACMEProxy(target, p.newOrderPath, p.listenerTLS, pool, p.pebbleLog)
	// A port no earlier proxy of this process had (FreePort), not one the
	// kernel may hand out again: acmez caches each directory it fetched by
	// its URL for 12 hours, process-wide, and would give a later Pebble's
	// clients an earlier one's directory (its profiles, with the app's
	// check of them skipped, since that check sees the directory fetched).
	var addr string
	for attempt := 1; ; attempt++ {
		addr, err = p.proxy.serve(net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t))))
		if err == nil || attempt == 3 {
			break
		}
	}
	if err != nil {
		return err
	}
	t.Cleanup(p.proxy.stop)
	p.DirectoryURL = "https://" + addr + "/dir"
	return nil
}

// Orders returns the number of orders Pebble has created so far, counted from
// its log (PebbleOrderLogPattern). Pebble's output reaches the test
// asynchronously, so it first waits (up to 5s) until the log accounts for
// every order the proxy has already passed back to a client; a client that has
// received its order is therefore always counted.
func (p *Pebble) Orders() int {
	return p.proxy.awaitLogged(func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.logOrderIDs)
	})
}

// OrdersFor returns the number of orders Pebble has created so far whose
// identifiers include name (a DNS name, compared case-insensitively, or an IP
// address). Pebble's log does not name an order's identifiers, so these are
// taken from Pebble's newOrder responses as they pass the proxy behind
// DirectoryURL.
func (p *Pebble) OrdersFor(name string) int { return p.proxy.ordersFor(name) }

// OrderList returns the orders Pebble has created so far, oldest first, as
// seen in its newOrder responses (see OrdersFor).
func (p *Pebble) OrderList() []PebbleOrder { return p.proxy.list() }

// Log returns Pebble's output so far (plus any errors of the recording proxy),
// followed by pebble-challtestsrv's output if it runs, for debugging.
func (p *Pebble) Log() string {
	if p.ChallSrvURL == "" {
		return p.pebbleLog.String()
	}
	return p.pebbleLog.String() + "\n--- pebble-challtestsrv ---\n" + p.challLog.String()
}

// Client returns a new HTTP client that trusts ListenerCAPEM, for talking to
// the ACME and management APIs.
func (p *Pebble) Client() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.listenerCAPEM)
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		Timeout:   30 * time.Second,
	}
}

// RootPEM returns the PEM of Pebble's root certificate i (0 is the default
// chain's root, 1.. are PebbleOptions.AlternateRoots), fetched from the
// management API. Pebble generates new roots at every start.
func (p *Pebble) RootPEM(t testing.TB, i int) []byte {
	t.Helper()
	return p.mgmtPEM(t, "roots", i)
}

// Root returns Pebble's root certificate i (see RootPEM).
func (p *Pebble) Root(t testing.TB, i int) *x509.Certificate {
	t.Helper()
	return parseOneCert(t, p.RootPEM(t, i))
}

// RootPool returns a pool with all of Pebble's roots: root 0 and every
// alternate root.
func (p *Pebble) RootPool(t testing.TB) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	for i := 0; i < p.numRoots; i++ {
		pool.AddCert(p.Root(t, i))
	}
	return pool
}

// IntermediatePEM returns the PEM of the intermediate that issues leaf
// certificates in chain i (0 is the default chain), fetched from the
// management API.
func (p *Pebble) IntermediatePEM(t testing.TB, i int) []byte {
	t.Helper()
	return p.mgmtPEM(t, "intermediates", i)
}

func (p *Pebble) mgmtPEM(t testing.TB, kind string, i int) []byte {
	t.Helper()
	u := fmt.Sprintf("%s/%s/%d", p.ManagementURL, kind, i)
	body, err := p.get(u, 10*time.Second)
	if err != nil {
		t.Fatalf("testenv: fetching Pebble %s %d: %v", kind, i, err)
	}
	return body
}

func parseOneCert(t testing.TB, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("testenv: expected a PEM certificate, got %q", pemBytes)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("testenv: parsing certificate: %v", err)
	}
	return cert
}

// SetRenewalInfo makes Pebble answer renewalInfo (ARI) requests for the
// certificate certPEM (its leaf first) with the suggested window
// [start, end], through the management API.
func (p *Pebble) SetRenewalInfo(t testing.TB, certPEM []byte, start, end time.Time) {
	t.Helper()
	var window struct {
		SuggestedWindow struct {
			Start time.Time `json:"start"`
			End   time.Time `json:"end"`
		} `json:"suggestedWindow"`
	}
	window.SuggestedWindow.Start, window.SuggestedWindow.End = start.UTC(), end.UTC()
	ari, err := json.Marshal(window)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(map[string]string{"Certificate": string(certPEM), "ARIResponse": string(ari)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := p.Client().Post(p.ManagementURL+"/set-renewal-info/", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("testenv: setting Pebble's renewal info: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("testenv: setting Pebble's renewal info: %s: %s", resp.Status, msg)
	}
}

// SetServFail makes pebble-challtestsrv answer SERVFAIL to every DNS query
// for host, so that the CA's validation of host fails. It fails the test if
// Pebble was started with PebbleOptions.DNSServer (no pebble-challtestsrv).
func (p *Pebble) SetServFail(t testing.TB, host string) {
	t.Helper()
	if p.ChallSrvURL == "" {
		t.Fatalf("testenv: SetServFail(%q): Pebble was started with PebbleOptions.DNSServer %s, so no pebble-challtestsrv runs; make the name fail in that DNS server instead", host, p.DNSServer)
		return // for test doubles whose Fatalf returns
	}
	body, err := json.Marshal(map[string]string{"host": host})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(p.ChallSrvURL+"/set-servfail", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("testenv: setting SERVFAIL for %s: %v", host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("testenv: setting SERVFAIL for %s: %s: %s", host, resp.Status, msg)
	}
}
