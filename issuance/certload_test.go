package issuance

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"golang.org/x/crypto/ocsp"
)

// loadCounter is certmagic's file storage recording the keys it is asked
// to Load, in order; with many set, it also has LoadMany (loading the keys
// one by one, recorded as one batch).
type loadCounter struct {
	*certmagic.FileStorage
	mu      sync.Mutex
	loads   []string
	batches [][]string
}

func (c *loadCounter) Load(ctx context.Context, key string) ([]byte, error) {
	c.mu.Lock()
	c.loads = append(c.loads, key)
	c.mu.Unlock()
	return c.FileStorage.Load(ctx, key)
}

// taken returns the Loads and batches since the last call.
func (c *loadCounter) taken() (loads []string, batches [][]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	loads, batches = c.loads, c.batches
	c.loads, c.batches = nil, nil
	slices.Sort(loads)
	return loads, batches
}

type manyLoadCounter struct{ *loadCounter }

func (c manyLoadCounter) LoadMany(ctx context.Context, keys []string) ([][]byte, []error) {
	c.mu.Lock()
	c.batches = append(c.batches, slices.Clone(keys))
	c.mu.Unlock()
	values, errs := make([][]byte, len(keys)), make([]error, len(keys))
	for i, key := range keys {
		values[i], errs[i] = c.FileStorage.Load(ctx, key)
	}
	return values, errs
}

// testLeaf is a certificate for name signed by a throwaway CA, as certmagic
// stores it, with an OCSP responder if ocspURL is set; staple is a good
// OCSP response for it, signed by the CA.
func testLeaf(t *testing.T, name, ocspURL string) (chain, key, staple []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "certload test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), DNSNames: []string{name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
	}
	if ocspURL != "" {
		tmpl.OCSPServer = []string{ocspURL}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	keyDER, err := x509.MarshalECPrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	chain = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	key = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	staple, err = ocsp.CreateResponse(ca, ca, ocsp.Response{
		Status: ocsp.Good, SerialNumber: leaf.SerialNumber,
		ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(24 * time.Hour),
	}, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return chain, key, staple
}

// TestCertLoad: loading a stored certificate into memory reads its key,
// chain and metadata in one batch (one LoadMany, or three Loads at once on
// a storage without it) instead of three Loads in a row, and looks up no
// OCSP staple for a leaf without a responder; a leaf with one still gets
// its stored staple. The certificate loaded is the one stored.
func TestCertLoad(t *testing.T) {
	for _, many := range []bool{false, true} {
		t.Run(map[bool]string{false: "parallel_loads", true: "load_many"}[many], func(t *testing.T) {
			counter := &loadCounter{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
			var inner certmagic.Storage = counter
			if many {
				inner = manyLoadCounter{counter}
			}
			rt := buildRuntime(t, noCA, InstrumentStorage(inner, "certload_test"), Options{})
			issuerKey := rt.opts.Issuer.IssuerKey()
			ctx := t.Context()

			store := func(name, ocspURL string) (chain, staple []byte, keys []string) {
				chain, key, staple := testLeaf(t, name, ocspURL)
				meta, err := json.Marshal(map[string]any{"sans": []string{name}, "issuer_data": map[string]any{"url": "https://ca.example/cert/1"}})
				if err != nil {
					t.Fatal(err)
				}
				keys = []string{
					certmagic.StorageKeys.SitePrivateKey(issuerKey, name),
					certmagic.StorageKeys.SiteCert(issuerKey, name),
					certmagic.StorageKeys.SiteMeta(issuerKey, name),
				}
				for i, v := range [][]byte{key, chain, meta} {
					if err := counter.Store(ctx, keys[i], v); err != nil {
						t.Fatal(err)
					}
				}
				if got, gotMeta, ok := siteAssets(keys[0]); !ok || got != keys[1] || gotMeta != keys[2] {
					t.Fatalf("siteAssets(%q) = %q, %q, %v; certmagic's keys are %q, %q", keys[0], got, gotMeta, ok, keys[1], keys[2])
				}
				return chain, staple, keys
			}
			check := func(cert certmagic.Certificate, chain []byte) {
				t.Helper()
				block, _ := pem.Decode(chain)
				if len(cert.Certificate.Certificate) != 2 || !bytes.Equal(cert.Certificate.Certificate[0], block.Bytes) {
					t.Fatal("the certificate loaded is not the one stored")
				}
			}
			wantReads := func(keys []string, extra ...string) {
				t.Helper()
				loads, batches := counter.taken()
				want := slices.Sorted(slices.Values(append(slices.Clone(keys), extra...)))
				if many {
					if len(batches) != 1 || !slices.Equal(batches[0], keys) {
						t.Fatalf("batches %q, want one of %q", batches, keys)
					}
					want = slices.Sorted(slices.Values(extra))
				}
				if !slices.Equal(loads, want) {
					t.Fatalf("Loads %q, want %q", loads, want)
				}
			}

			// no OCSP responder: one batch, no staple lookup
			chain, _, keys := store("plain.example.com", "")
			counter.taken()
			cert, err := rt.cacheManaged(ctx, "plain.example.com")
			if err != nil {
				t.Fatal(err)
			}
			check(cert, chain)
			if cert.Certificate.OCSPStaple != nil {
				t.Fatal("a staple for a leaf without a responder")
			}
			wantReads(keys)
			// without a certLoad, certmagic's four Loads, as before
			if _, err := rt.magic.CacheManagedCertificate(ctx, "plain.example.com"); err != nil {
				t.Fatal(err)
			}
			if loads, _ := counter.taken(); len(loads) != 4 {
				t.Fatalf("certmagic alone: Loads %q, want 4", loads)
			}

			// a leaf with a responder: its staple is looked up, and used
			chain, staple, keys := store("stapled.example.com", "http://127.0.0.1:1/ocsp")
			leafCert := certmagic.Certificate{Names: []string{"stapled.example.com"}}
			stapleKey := certmagic.StorageKeys.OCSPStaple(&leafCert, chain)
			if err := counter.Store(ctx, stapleKey, staple); err != nil {
				t.Fatal(err)
			}
			counter.taken()
			cert, err = rt.cacheManaged(ctx, "stapled.example.com")
			if err != nil {
				t.Fatal(err)
			}
			check(cert, chain)
			if !bytes.Equal(cert.Certificate.OCSPStaple, staple) {
				t.Fatal("the stored staple was not stapled")
			}
			wantReads(keys, stapleKey)

			// nothing stored: one batch, the missing key's answer
			missing := []string{
				certmagic.StorageKeys.SitePrivateKey(issuerKey, "missing.example.com"),
				certmagic.StorageKeys.SiteCert(issuerKey, "missing.example.com"),
				certmagic.StorageKeys.SiteMeta(issuerKey, "missing.example.com"),
			}
			counter.taken()
			if _, err := rt.cacheManaged(ctx, "missing.example.com"); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("missing certificate: %v, want fs.ErrNotExist", err)
			}
			wantReads(missing)
		})
	}
}
