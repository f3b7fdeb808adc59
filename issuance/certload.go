package issuance

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/caddyserver/certmagic"
)

// certLoad is one load of a certificate from storage into memory
// (certmagic's CacheManagedCertificate, called by cacheManaged). certmagic
// reads the private key, the chain and the metadata one after another,
// then looks up a stored OCSP staple: four round trips in a row on a cold
// handshake. Within a certLoad, the storage wrapper (instrumentedStorage)
// makes them one:
//
//   - the Load of a site's private key (certificates/<issuer>/<name>/<name>.key,
//     StorageKeys.SitePrivateKey) reads the key, the chain and the metadata
//     at once (LoadMany: one round trip on a ManyLoader, three Loads in
//     parallel on other storages); certmagic's next Loads of the chain and
//     the metadata take what was read, once each.
//   - the staple lookup (a key under ocsp/) is answered "not found" without
//     a round trip when every chain read ahead in this load has a leaf
//     without an OCSP responder: certmagic staples nothing to such a leaf
//     (ErrNoOCSPServerSpecified, whatever storage holds) and stores staples
//     only for leaves with one. A leaf with a responder has its staple
//     looked up, fetched and stored as before.
//
// Nothing outlives the call: a value read ahead is handed out once, and any
// other Load reaches storage. The metrics count the batch (one load_many,
// or one load per key), not the Loads it answers.
type certLoad struct {
	mu     sync.Mutex
	ahead  map[string]loadedValue
	chains int  // chains read ahead
	ocsp   bool // one of them has a leaf with an OCSP responder
}

type loadedValue struct {
	value []byte
	err   error
}

type certLoadKey struct{}

// cacheManaged loads name's certificate from storage into the cache
// through certmagic, in one round trip where it can (certLoad).
func (r *Runtime) cacheManaged(ctx context.Context, name string) (certmagic.Certificate, error) {
	return r.magic.CacheManagedCertificate(withCertLoad(ctx), name)
}

// withCertLoad returns ctx carrying a new certLoad.
func withCertLoad(ctx context.Context) context.Context {
	return context.WithValue(ctx, certLoadKey{}, &certLoad{ahead: make(map[string]loadedValue, 2)})
}

// certLoadFrom returns ctx's certLoad, or nil.
func certLoadFrom(ctx context.Context) *certLoad {
	l, _ := ctx.Value(certLoadKey{}).(*certLoad)
	return l
}

// load answers s.Load(ctx, key) within l, if it can: from what was read
// ahead, by reading ahead, or for a staple that cannot exist. ok false:
// key is for storage alone.
func (l *certLoad) load(ctx context.Context, s *instrumentedStorage, key string) (v loadedValue, ok bool) {
	l.mu.Lock()
	if v, ok = l.ahead[key]; ok {
		delete(l.ahead, key)
		l.mu.Unlock()
		return v, true
	}
	noStaple := l.chains > 0 && !l.ocsp && strings.HasPrefix(key, "ocsp/")
	l.mu.Unlock()
	if noStaple {
		return loadedValue{err: fmt.Errorf("%s: %w (the certificate names no OCSP responder)", key, fs.ErrNotExist)}, true
	}
	chain, meta, isKey := siteAssets(key)
	if !isKey {
		return v, false
	}
	// the batch's own Loads (LoadParallel on a storage without LoadMany)
	// must not come back here
	values, errs := s.LoadMany(context.WithValue(ctx, certLoadKey{}, (*certLoad)(nil)), []string{key, chain, meta})
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ahead[chain] = loadedValue{values[1], errs[1]}
	l.ahead[meta] = loadedValue{values[2], errs[2]}
	if errs[1] == nil {
		l.chains++
		l.ocsp = l.ocsp || !leafWithoutOCSP(values[1])
	}
	return loadedValue{values[0], errs[0]}, true
}

// siteAssets returns the keys of the chain and the metadata stored beside
// key, if key is a site's private key in certmagic's layout.
func siteAssets(key string) (chain, meta string, ok bool) {
	base, ok := strings.CutSuffix(key, ".key")
	if !ok || !strings.HasPrefix(key, "certificates/") {
		return "", "", false
	}
	return base + ".crt", base + ".json", true
}

// leafWithoutOCSP reports whether the first certificate of the PEM bundle
// parses and names no OCSP responder. Anything else counts as one with a
// responder, so that its staple is looked up as certmagic would.
func leafWithoutOCSP(bundle []byte) bool {
	block, _ := pem.Decode(bundle)
	if block == nil || block.Type != "CERTIFICATE" {
		return false
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	return err == nil && len(leaf.OCSPServer) == 0
}
