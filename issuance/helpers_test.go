package issuance

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// The tests of this package build a Runtime as the app's Provision does —
// a certmagic cache and configuration whose OnEvent feeds the runtime, an
// ACME issuer, a storage — without Caddy: over certmagic's file storage, and
// ordering from a real Pebble where a test needs a CA. Pebble's HTTP-01
// validation reaches certmagic's own challenge server, which the issuer
// starts on the rig's HTTP port.

// testCA is where a test runtime orders.
type testCA struct {
	pebble   *testenv.Pebble // nil: nothing listens at the directory
	dir      string
	roots    *x509.CertPool
	httpPort int
}

// noCA is a directory where nothing listens: an order fails at once
// (before the CA, from the runtime's point of view).
var noCA = testCA{dir: "https://127.0.0.1:1/dir"}

// startCA starts Pebble with its HTTP-01 validation pointed at a free port
// the runtime's issuer answers on.
func startCA(t *testing.T, opts testenv.PebbleOptions) testCA {
	t.Helper()
	port := testenv.FreePort(t)
	opts.HTTPPort = port
	p := testenv.StartPebble(t, opts)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.ListenerCAPEM)
	return testCA{pebble: p, dir: p.DirectoryURL, roots: roots, httpPort: port}
}

// testRuntime is a Runtime with the parts a test looks at.
type testRuntime struct {
	*Runtime
	ca testCA
}

// newTestRuntime returns a started runtime ordering from ca over storage
// (a file storage in a temporary directory if nil) with opts' settings;
// it stops when the test ends.
func newTestRuntime(t *testing.T, ca testCA, storage certmagic.Storage, opts Options) *testRuntime {
	t.Helper()
	rt := buildRuntime(t, ca, storage, opts)
	rt.Start()
	return rt
}

// buildRuntime is newTestRuntime without Start.
func buildRuntime(t *testing.T, ca testCA, storage certmagic.Storage, opts Options) *testRuntime {
	t.Helper()
	if storage == nil {
		storage = &certmagic.FileStorage{Path: t.TempDir()}
	}
	logger := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	ctx, cancel := context.WithCancel(context.Background())
	var rt *Runtime
	var magic *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           logger,
	})
	magic = certmagic.New(cache, certmagic.Config{
		Storage:   storage,
		KeySource: certmagic.StandardKeyGenerator{KeyType: certmagic.P256},
		Logger:    logger,
		OnEvent: func(ctx context.Context, name string, data map[string]any) error {
			rt.HandleEvent(ctx, name, data)
			return nil
		},
		RenewalWindowRatio: 0.01,
		DisableARI:         opts.DisableARI,
	})
	issuer := certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{
		CA:                      ca.dir,
		TestCA:                  ca.dir,
		Email:                   "ops-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "@example.com", // a new account: a fresh certmagic limiter
		Agreed:                  true,
		TrustedRoots:            ca.roots,
		AltHTTPPort:             ca.httpPort,
		ListenHost:              "127.0.0.1",
		DisableTLSALPNChallenge: true,
		Logger:                  logger,
	})
	magic.Issuers = []certmagic.Issuer{issuer}
	opts.Magic, opts.Cache, opts.Issuer, opts.Storage, opts.Logger = magic, cache, issuer, storage, logger
	if opts.IssueTimeout == 0 {
		opts.IssueTimeout = 60 * time.Second
	}
	if opts.FirstScanDelay == 0 {
		opts.FirstScanDelay = time.Hour // scans when the test asks
	}
	rt = New(ctx, opts)
	t.Cleanup(func() {
		cancel()
		rt.Stop()
		cache.Stop()
	})
	return &testRuntime{Runtime: rt, ca: ca}
}

// get asks for name's certificate as a handshake would.
func (r *testRuntime) get(ctx context.Context, name string) (*tls.Certificate, error) {
	return r.Certificate(ctx, &tls.ClientHelloInfo{ServerName: name})
}

// mustGet is get that fails the test on error, and returns the leaf.
func (r *testRuntime) mustGet(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	cert, err := r.get(t.Context(), name)
	if err != nil {
		log := ""
		if r.ca.pebble != nil {
			log = r.ca.pebble.Log()
		}
		t.Fatalf("certificate for %s: %v\npebble log:\n%s", name, err, log)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			t.Fatal(err)
		}
	}
	if err := leaf.VerifyHostname(name); err != nil {
		t.Fatalf("leaf for %s: %v", name, err)
	}
	return leaf
}

// cacheCert puts a self-signed certificate for name into r's cache.
func cacheCert(t *testing.T, r *testRuntime, name string, notAfter time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.magic.CacheUnmanagedTLSCertificate(t.Context(), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil); err != nil {
		t.Fatal(err)
	}
}
