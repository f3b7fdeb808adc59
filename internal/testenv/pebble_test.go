package testenv

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestFreePort(t *testing.T) {
	t.Parallel()
	port := FreePort(t)
	if port <= 0 || port > 65535 {
		t.Fatalf("FreePort = %d", port)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("port %d from FreePort is not free: %v", port, err)
	}
	l.Close()
}

// recordingTB captures Skip/Fatal instead of stopping the test.
type recordingTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordingTB) Helper()           {}
func (r *recordingTB) Skip(args ...any)  { r.skipped = fmt.Sprint(args...) }
func (r *recordingTB) Fatal(args ...any) { r.failed = fmt.Sprint(args...) }
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

func TestFindBinary(t *testing.T) {
	// Uses t.Setenv, so not parallel.
	dir := t.TempDir()
	exe := filepath.Join(dir, "testenv-fake-server")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(BinDirEnv, dir)

	if got := FindBinary(t, "testenv-fake-server"); got != exe {
		t.Errorf("FindBinary found %q, want %q", got, exe)
	}

	t.Setenv("CI", "")
	r := &recordingTB{TB: t}
	if got := FindBinary(r, "testenv-no-such-server"); got != "" || r.failed != "" ||
		!strings.Contains(r.skipped, InstallCommand) {
		t.Errorf("missing binary outside CI: got %q, skipped %q, failed %q; want a skip naming %s",
			got, r.skipped, r.failed, InstallCommand)
	}

	t.Setenv("CI", "true")
	r = &recordingTB{TB: t}
	if FindBinary(r, "testenv-no-such-server"); r.skipped != "" || !strings.Contains(r.failed, InstallCommand) {
		t.Errorf("missing binary with CI=true: skipped %q, failed %q; want a failure naming %s",
			r.skipped, r.failed, InstallCommand)
	}
}

// getJSON GETs u with a client trusting only caPEM and decodes the body.
func getJSON(t *testing.T, caPEM []byte, u string) map[string]any {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ListenerCAPEM holds no certificate")
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("decoding %s: %v", u, err)
	}
	return m
}

func TestPebbleDirectoryAndRoots(t *testing.T) {
	t.Parallel()
	start := time.Now()
	p := StartPebble(t, PebbleOptions{HTTPPort: FreePort(t)})
	t.Logf("StartPebble took %s", time.Since(start).Round(time.Millisecond))

	if !strings.HasPrefix(p.DirectoryURL, "https://127.0.0.1:") || !strings.HasSuffix(p.DirectoryURL, "/dir") {
		t.Errorf("DirectoryURL = %q", p.DirectoryURL)
	}
	fileCA, err := os.ReadFile(p.ListenerCAFile)
	if err != nil || !bytes.Equal(fileCA, p.ListenerCAPEM) {
		t.Errorf("ListenerCAFile %s does not hold ListenerCAPEM (err %v)", p.ListenerCAFile, err)
	}

	dir := getJSON(t, p.ListenerCAPEM, p.DirectoryURL)
	dirURL, _ := url.Parse(p.DirectoryURL)
	for _, k := range []string{"newNonce", "newAccount", "newOrder", "renewalInfo"} {
		v, _ := dir[k].(string)
		u, err := url.Parse(v)
		if v == "" || err != nil {
			t.Errorf("directory lacks %s: %v", k, dir)
			continue
		}
		// Everything must go through the recording proxy.
		if u.Host != dirURL.Host {
			t.Errorf("directory %s = %q, want host %s", k, v, dirURL.Host)
		}
	}
	meta, _ := dir["meta"].(map[string]any)
	if eab, _ := meta["externalAccountRequired"].(bool); eab {
		t.Errorf("externalAccountRequired = true without EAB keys")
	}

	root := p.Root(t, 0)
	if !root.IsCA || root.CheckSignatureFrom(root) != nil {
		t.Errorf("Root(0) %q is not a self-signed CA", root.Subject)
	}
	if root.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("Root(0) key is %s, want ECDSA by default", root.PublicKeyAlgorithm)
	}
	if !bytes.Equal(p.RootPEM(t, 0), p.RootPEM(t, 0)) {
		t.Errorf("RootPEM(0) is not stable")
	}
	inter := parseOneCert(t, p.IntermediatePEM(t, 0))
	if _, err := inter.Verify(x509.VerifyOptions{Roots: p.RootPool(t)}); err != nil {
		t.Errorf("intermediate 0 does not chain to RootPool: %v", err)
	}

	if n := p.Orders(); n != 0 {
		t.Errorf("Orders() = %d initially, want 0", n)
	}
	if n := p.OrdersFor("example.com"); n != 0 {
		t.Errorf("OrdersFor = %d initially, want 0", n)
	}
	if !strings.Contains(p.Log(), "Starting Pebble ACME server") {
		t.Errorf("Log() lacks Pebble's start-up line:\n%s", p.Log())
	}
}

func TestPebbleAlternateRoots(t *testing.T) {
	t.Parallel()
	p := StartPebble(t, PebbleOptions{HTTPPort: FreePort(t), AlternateRoots: 1})
	r0, r1 := p.Root(t, 0), p.Root(t, 1)
	if bytes.Equal(r0.Raw, r1.Raw) {
		t.Fatal("Root(1) equals Root(0)")
	}
	// Each chain's intermediate verifies with the pool, and only chain 1's
	// with root 1 alone.
	pool := p.RootPool(t)
	for i, r := range []*x509.Certificate{r0, r1} {
		inter := parseOneCert(t, p.IntermediatePEM(t, i))
		if _, err := inter.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
			t.Errorf("intermediate %d does not chain to RootPool: %v", i, err)
		}
		if err := inter.CheckSignatureFrom(r); err != nil {
			t.Errorf("intermediate %d is not signed by root %d: %v", i, i, err)
		}
	}
}

func TestPebbleRSAKeys(t *testing.T) {
	t.Parallel()
	p := StartPebble(t, PebbleOptions{HTTPPort: FreePort(t), KeyAlgorithm: "rsa"})
	if alg := p.Root(t, 0).PublicKeyAlgorithm; alg != x509.RSA {
		t.Errorf("Root(0) key is %s, want RSA", alg)
	}
}

func TestPebbleEAB(t *testing.T) {
	t.Parallel()
	hmacKey := make([]byte, 32)
	rand.Read(hmacKey)
	const kid = "kid-1"
	p := StartPebble(t, PebbleOptions{
		HTTPPort: FreePort(t),
		EAB:      map[string]string{kid: base64.RawURLEncoding.EncodeToString(hmacKey)},
	})
	dir := getJSON(t, p.ListenerCAPEM, p.DirectoryURL)
	meta, _ := dir["meta"].(map[string]any)
	if eab, _ := meta["externalAccountRequired"].(bool); !eab {
		t.Fatalf("directory meta = %v, want externalAccountRequired: true", meta)
	}

	c := newACMEClient(t, p)
	if status, body := c.newAccount(nil); status < 400 ||
		!strings.Contains(string(body), "externalAccountRequired") {
		t.Errorf("newAccount without EAB: %d %s; want an externalAccountRequired error", status, body)
	}
	if status, body := c.newAccount(&eabCreds{kid: kid, key: []byte("wrong key, wrong key, wrong key!")}); status < 400 {
		t.Errorf("newAccount with a wrong EAB key: %d %s; want an error", status, body)
	}
	if status, body := c.newAccount(&eabCreds{kid: kid, key: hmacKey}); status != http.StatusCreated {
		t.Fatalf("newAccount with EAB: %d %s", status, body)
	}
}

// TestPebbleIssuanceAndOrderCounting runs a complete HTTP-01 issuance
// through the recording proxy and checks order counting, the configured
// validity period and chain length, and that authorizations are not reused.
func TestPebbleIssuanceAndOrderCounting(t *testing.T) {
	t.Parallel()
	c := &acmeClient{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		tokens = map[string]int{} // token -> number of validation requests
	)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.URL.Path, "/.well-known/acme-challenge/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		tokens[token]++ // Pebble may validate from several "perspectives" at once.
		mu.Unlock()
		io.WriteString(w, token+"."+c.thumbprint())
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	const validity = 3 * time.Hour
	p := StartPebble(t, PebbleOptions{
		HTTPPort:       ln.Addr().(*net.TCPAddr).Port,
		ValidityPeriod: validity,
		ChainLength:    2,
	})
	c.init(t, p)
	if status, body := c.newAccount(nil); status != http.StatusCreated {
		t.Fatalf("newAccount: %d %s", status, body)
	}

	const name = "www.Example-Testenv.test"
	chain := c.obtain(name)
	leaf := chain[0]
	if len(leaf.DNSNames) != 1 || !strings.EqualFold(leaf.DNSNames[0], name) {
		t.Errorf("leaf names %v, want %s", leaf.DNSNames, name)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore) + time.Second; got != validity {
		t.Errorf("leaf lifetime %s, want %s", got, validity)
	}
	if len(chain) != 3 {
		t.Errorf("chain has %d certificates, want leaf + 2 intermediates", len(chain))
	}
	inters := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inters.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: p.RootPool(t), Intermediates: inters, DNSName: strings.ToLower(name)}); err != nil {
		t.Errorf("leaf does not verify against RootPool: %v", err)
	}

	if n := p.Orders(); n != 1 {
		t.Errorf("Orders() = %d after one issuance, want 1\n%s", n, p.Log())
	}
	if n := p.OrdersFor(name); n != 1 {
		t.Errorf("OrdersFor(%q) = %d, want 1", name, n)
	}
	if n := p.OrdersFor("other.test"); n != 0 {
		t.Errorf("OrdersFor(other.test) = %d, want 0", n)
	}

	// A second order for the same name needs a fresh validation
	// (PEBBLE_AUTHZREUSE=0) and is counted at once.
	c.obtain(strings.ToLower(name))
	if n := p.Orders(); n != 2 {
		t.Errorf("Orders() = %d after two issuances, want 2", n)
	}
	if n := p.OrdersFor(name); n != 2 {
		t.Errorf("OrdersFor(%q) = %d, want 2", name, n)
	}
	mu.Lock()
	distinct := len(tokens)
	mu.Unlock()
	if distinct != 2 {
		t.Errorf("HTTP-01 responder saw %d distinct tokens, want 2 (no authz reuse)", distinct)
	}

	// The proxy's view and Pebble's log agree on the order IDs.
	var proxyIDs []string
	for _, o := range p.OrderList() {
		proxyIDs = append(proxyIDs, o.ID)
	}
	p.mu.Lock()
	logIDs := slices.Clone(p.logOrderIDs)
	p.mu.Unlock()
	if !slices.Equal(proxyIDs, logIDs) {
		t.Errorf("order IDs via proxy %v, in Pebble's log %v", proxyIDs, logIDs)
	}
}

// acmeClient is a minimal RFC 8555 client (ES256 account key) for testing
// Pebble without third-party libraries.
type acmeClient struct {
	t     *testing.T
	hc    *http.Client
	dir   map[string]string
	key   *ecdsa.PrivateKey
	kid   string
	nonce string
	once  sync.Once
}

type eabCreds struct {
	kid string
	key []byte
}

func newACMEClient(t *testing.T, p *Pebble) *acmeClient {
	c := &acmeClient{}
	c.init(t, p)
	return c
}

func (c *acmeClient) accountKey() *ecdsa.PrivateKey {
	c.once.Do(func() {
		var err error
		c.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
	})
	return c.key
}

func (c *acmeClient) init(t *testing.T, p *Pebble) {
	c.t = t
	c.hc = p.Client()
	t.Cleanup(c.hc.CloseIdleConnections)
	c.accountKey()
	resp, err := c.hc.Get(p.DirectoryURL)
	if err != nil {
		t.Fatalf("GET directory: %v", err)
	}
	defer resp.Body.Close()
	raw := map[string]any{}
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	c.dir = map[string]string{}
	for k, v := range raw {
		if s, ok := v.(string); ok {
			c.dir[k] = s
		}
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (c *acmeClient) jwk() map[string]string {
	pub := c.accountKey().PublicKey
	x, y := make([]byte, 32), make([]byte, 32)
	pub.X.FillBytes(x)
	pub.Y.FillBytes(y)
	return map[string]string{"crv": "P-256", "kty": "EC", "x": b64(x), "y": b64(y)}
}

func (c *acmeClient) thumbprint() string {
	j := c.jwk()
	// RFC 7638: members in lexicographic order, no whitespace.
	s := fmt.Sprintf(`{"crv":%q,"kty":%q,"x":%q,"y":%q}`, j["crv"], j["kty"], j["x"], j["y"])
	sum := sha256.Sum256([]byte(s))
	return b64(sum[:])
}

func (c *acmeClient) getNonce() string {
	if n := c.nonce; n != "" {
		c.nonce = ""
		return n
	}
	resp, err := c.hc.Head(c.dir["newNonce"])
	if err != nil {
		c.t.Fatalf("newNonce: %v", err)
	}
	resp.Body.Close()
	return resp.Header.Get("Replay-Nonce")
}

// post sends a JWS-signed POST; payload nil means POST-as-GET. It uses the
// account URL as kid once known, else the JWK.
func (c *acmeClient) post(u string, payload any) (*http.Response, []byte) {
	c.t.Helper()
	protected := map[string]any{"alg": "ES256", "nonce": c.getNonce(), "url": u}
	if c.kid != "" {
		protected["kid"] = c.kid
	} else {
		protected["jwk"] = c.jwk()
	}
	var payloadB64 string
	if payload != nil {
		pj, err := json.Marshal(payload)
		if err != nil {
			c.t.Fatal(err)
		}
		payloadB64 = b64(pj)
	}
	ph, _ := json.Marshal(protected)
	signingInput := b64(ph) + "." + payloadB64
	digest := sha256.Sum256([]byte(signingInput))
	r, s, err := ecdsa.Sign(rand.Reader, c.accountKey(), digest[:])
	if err != nil {
		c.t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	body, _ := json.Marshal(map[string]string{"protected": b64(ph), "payload": payloadB64, "signature": b64(sig)})
	req, _ := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/jose+json")
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("POST %s: reading body: %v", u, err)
	}
	c.nonce = resp.Header.Get("Replay-Nonce")
	return resp, respBody
}

// newAccount registers the account key (with external account binding if
// eab is set) and returns the status and body.
func (c *acmeClient) newAccount(eab *eabCreds) (int, []byte) {
	c.t.Helper()
	u := c.dir["newAccount"]
	payload := map[string]any{"termsOfServiceAgreed": true}
	if eab != nil {
		ph, _ := json.Marshal(map[string]string{"alg": "HS256", "kid": eab.kid, "url": u})
		pj, _ := json.Marshal(c.jwk())
		input := b64(ph) + "." + b64(pj)
		mac := hmac.New(crypto.SHA256.New, eab.key)
		mac.Write([]byte(input))
		payload["externalAccountBinding"] = map[string]string{
			"protected": b64(ph), "payload": b64(pj), "signature": b64(mac.Sum(nil)),
		}
	}
	resp, body := c.post(u, payload)
	if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK {
		c.kid = resp.Header.Get("Location")
	}
	return resp.StatusCode, body
}

type acmeOrder struct {
	Status         string   `json:"status"`
	Authorizations []string `json:"authorizations"`
	Finalize       string   `json:"finalize"`
	Certificate    string   `json:"certificate"`
}

// obtain orders, validates (HTTP-01), finalizes and downloads a certificate
// for name, returning the parsed chain (leaf first).
func (c *acmeClient) obtain(name string) []*x509.Certificate {
	c.t.Helper()
	return c.obtainWith(name, orderOpts{})
}

// orderOpts are the options of obtainWith.
type orderOpts struct {
	profile string     // the order's "profile", if set
	dns01   *DNSServer // if set, validate by DNS-01 through this server
}

// obtainWith is obtain with a profile and/or DNS-01 validation: the TXT
// record is written into opts.dns01 by a TSIG-signed dynamic update before
// the challenge is answered, and removed once the authorization is valid.
func (c *acmeClient) obtainWith(name string, opts orderOpts) []*x509.Certificate {
	t := c.t
	t.Helper()
	newOrder := map[string]any{
		"identifiers": []map[string]string{{"type": "dns", "value": name}},
	}
	if opts.profile != "" {
		newOrder["profile"] = opts.profile
	}
	resp, body := c.post(c.dir["newOrder"], newOrder)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("newOrder: %s %s", resp.Status, body)
	}
	orderURL := resp.Header.Get("Location")
	var order acmeOrder
	if err := json.Unmarshal(body, &order); err != nil {
		t.Fatal(err)
	}
	for _, authzURL := range order.Authorizations {
		var authz struct {
			Status     string `json:"status"`
			Challenges []struct {
				Type  string `json:"type"`
				URL   string `json:"url"`
				Token string `json:"token"`
			} `json:"challenges"`
		}
		_, body := c.post(authzURL, nil)
		if err := json.Unmarshal(body, &authz); err != nil {
			t.Fatalf("authz %s: %v", body, err)
		}
		if authz.Status != "pending" {
			t.Fatalf("new order's authorization is %q, want pending (no reuse)", authz.Status)
		}
		want := "http-01"
		if opts.dns01 != nil {
			want = "dns-01"
		}
		var txt dns.RR
		for _, ch := range authz.Challenges {
			if ch.Type != want {
				continue
			}
			if opts.dns01 != nil {
				digest := sha256.Sum256([]byte(ch.Token + "." + c.thumbprint()))
				txt = c.setTXT(opts.dns01, "_acme-challenge."+strings.TrimPrefix(name, "*."), b64(digest[:]), true)
			}
			if resp, body := c.post(ch.URL, struct{}{}); resp.StatusCode != http.StatusOK {
				t.Fatalf("responding to challenge: %s %s", resp.Status, body)
			}
		}
		c.poll(authzURL, "valid", &authz.Status)
		if txt != nil {
			c.setTXT(opts.dns01, txt.Header().Name, txt.(*dns.TXT).Txt[0], false)
		}
	}

	certKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{name}}, certKey)
	if err != nil {
		t.Fatal(err)
	}
	if resp, body := c.post(order.Finalize, map[string]string{"csr": b64(csr)}); resp.StatusCode != http.StatusOK {
		t.Fatalf("finalize: %s %s", resp.Status, body)
	}
	c.poll(orderURL, "valid", &order)
	_, pemChain := c.post(order.Certificate, nil)
	var chain []*x509.Certificate
	for rest := pemChain; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		t.Fatalf("no certificates in %q", pemChain)
	}
	return chain
}

// setTXT adds (add) or deletes the TXT record name → value in s by a
// dynamic update signed with s's TSIG key, and returns the record.
func (c *acmeClient) setTXT(s *DNSServer, name, value string, add bool) dns.RR {
	t := c.t
	t.Helper()
	rr := txtRR(t, name, value)
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(s.Zone))
	if add {
		m.Insert([]dns.RR{rr})
	} else {
		m.Remove([]dns.RR{rr})
	}
	if r, err := sendUpdate(t, s, m, s.KeyName, s.Key); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("dynamic update of TXT %s (add %t): response %v, error %v", name, add, r, err)
	}
	return rr
}

// poll POSTs-as-GET u until its status is want, decoding into out (which
// must have a "status" field, or be a *string receiving it).
func (c *acmeClient) poll(u, want string, out any) {
	t := c.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, body := c.post(u, nil)
		var st struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("polling %s: %v: %s", u, err, body)
		}
		if st.Status == want {
			if s, ok := out.(*string); ok {
				*s = st.Status
			} else if err := json.Unmarshal(body, out); err != nil {
				t.Fatal(err)
			}
			return
		}
		if st.Status == "invalid" || time.Now().After(deadline) {
			t.Fatalf("%s is %q, want %q: %s", u, st.Status, want, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPebbleProfilesAndDNSServer starts Pebble with an extra profile and
// with a StartDNS server as its DNS, and obtains a certificate by DNS-01
// under that profile.
func TestPebbleProfilesAndDNSServer(t *testing.T) {
	t.Parallel()
	const shortLived = 6 * 24 * time.Hour
	dnsSrv := StartDNS(t, DNSOptions{})
	p := StartPebble(t, PebbleOptions{
		HTTPPort:  FreePort(t),
		DNSServer: dnsSrv.Addr,
		Profiles:  map[string]time.Duration{"shortlived": shortLived},
	})
	if p.DNSServer != dnsSrv.Addr || p.ChallSrvURL != "" {
		t.Errorf("DNSServer = %q, ChallSrvURL = %q; want %q and empty", p.DNSServer, p.ChallSrvURL, dnsSrv.Addr)
	}
	if strings.Contains(p.Log(), "pebble-challtestsrv") {
		t.Errorf("Log() mentions pebble-challtestsrv, which does not run:\n%s", p.Log())
	}
	r := &recordingTB{TB: t}
	if p.SetServFail(r, "www.dns01.test"); !strings.Contains(r.failed, "DNSServer") {
		t.Errorf("SetServFail without pebble-challtestsrv: failure %q, want one naming DNSServer", r.failed)
	}

	dir := getJSON(t, p.ListenerCAPEM, p.DirectoryURL)
	meta, _ := dir["meta"].(map[string]any)
	profiles, _ := meta["profiles"].(map[string]any)
	var names []string
	for name := range profiles {
		names = append(names, name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"default", "shortlived"}) {
		t.Fatalf("directory meta.profiles = %v, want default and shortlived", meta["profiles"])
	}

	c := newACMEClient(t, p)
	if status, body := c.newAccount(nil); status != http.StatusCreated {
		t.Fatalf("newAccount: %d %s", status, body)
	}
	resp, body := c.post(c.dir["newOrder"], map[string]any{
		"identifiers": []map[string]string{{"type": "dns", "value": "x.dns01.test"}},
		"profile":     "no-such-profile",
	})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "invalidProfile") {
		t.Errorf("newOrder with an unknown profile: %s %s; want 400 invalidProfile", resp.Status, body)
	}

	// DNS-01 through the BIND server, under profile "shortlived"; a
	// wildcard name validates at _acme-challenge.<base>.
	for _, name := range []string{"www.dns01.test", "*.wild.dns01.test"} {
		leaf := c.obtainWith(name, orderOpts{profile: "shortlived", dns01: dnsSrv})[0]
		if got := leaf.NotAfter.Sub(leaf.NotBefore) + time.Second; got != shortLived {
			t.Errorf("%s: leaf lifetime %s, want %s (profile shortlived)", name, got, shortLived)
		}
		if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != name {
			t.Errorf("leaf names %v, want %s", leaf.DNSNames, name)
		}
	}
	if got := dnsSrv.ChallengeRecords(t); len(got) != 0 {
		t.Errorf("challenge records left after issuance: %v", got)
	}
	if n := p.Orders(); n != 2 {
		t.Errorf("Orders() = %d, want 2 (the refused order is not created)", n)
	}
}
