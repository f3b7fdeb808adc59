package caddyacme

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(countedFileStorage{})
}

// countedFileStorage is certmagic's FileStorage under a module name of its
// own, caddy.storage.acme_test_counted, so that the storage metrics of an
// app that uses it carry a backend label that nothing else records under.
type countedFileStorage struct {
	Root string `json:"root"`
}

// CaddyModule returns the Caddy module information.
func (countedFileStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.acme_test_counted",
		New: func() caddy.Module { return new(countedFileStorage) },
	}
}

// CertMagicStorage returns the file storage at Root.
func (s countedFileStorage) CertMagicStorage() (certmagic.Storage, error) {
	return &certmagic.FileStorage{Path: s.Root}, nil
}

// TestCachedHandshakesReachNoStorage: once a name's certificate is in the
// app's memory, TLS handshakes for it (full ones, through Caddy's TLS app
// and get_certificate acme) perform no storage operation at all. The
// operations are counted with the samples of the app's storage metrics
// (caddy_acme_storage_operation_duration_seconds), which the first, cold,
// handshake must move, so that a broken count cannot pass.
func TestCachedHandshakesReachNoStorage(t *testing.T) {
	const (
		name       = "cached.perf.example.com"
		handshakes = 200
		backend    = "acme_test_counted"
	)
	// no renewal scan during the test (renew_first_delay); the cache sync
	// reads storage at start (waited for below), then every 10s

	root := t.TempDir()
	ca := newPerfCA(t)
	if err := seedCert(t.Context(), &certmagic.FileStorage{Path: root}, ca, perfIssuerKey, perfCAURL, name); err != nil {
		t.Fatal(err)
	}
	srv := newPerfServer(t)
	storage := map[string]any{"module": "acme_test_counted", "root": root}
	loadCaddy(t, srv.config(t, perfApp("perf.example.com", storage, nil), nil, false))
	deadline := time.Now().Add(10 * time.Second)
	for storageOps(backend)["load"] == 0 { // the cache sync's first read of the change log
		if time.Now().After(deadline) {
			t.Fatal("the cache sync did not read the change log within 10s of start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)

	before := storageOps(backend)
	first, err := handshake(t.Context(), srv.httpsAddr(), name, roots)
	if err != nil {
		t.Fatalf("first handshake: %v", err)
	}
	if cold := opsSince(backend, before); cold["load"] == 0 {
		t.Fatalf("the first handshake, which loads the certificate from storage, counted %v: the count does not work", cold)
	}

	before = storageOps(backend)
	for i := range handshakes {
		leaf, err := handshake(t.Context(), srv.httpsAddr(), name, roots)
		if err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
		if !leaf.Equal(first) {
			t.Fatalf("handshake %d served another certificate", i)
		}
	}
	if ops := opsSince(backend, before); len(ops) > 0 {
		t.Fatalf("%d cached handshakes performed storage operations %v, want none", handshakes, ops)
	}
}
