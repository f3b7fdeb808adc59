package caddyacme

// What the performance benchmarks (perf_bench_test.go) and the cached
// handshake test (perf_test.go) share: a test CA that issues certificates
// written into storage in certmagic's layout, the storage backends on real
// servers with their bare drivers, and a Caddy loaded in this process.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	goflag "flag"
	"fmt"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	consulapi "github.com/hashicorp/consul/api"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/mholt/acmez/v3/acme"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
)

// Sizes of the benchmarks that take minutes at full size; make bench
// passes the full sizes, development runs pass small ones (BENCHMARKS.md).
var (
	perfCerts        = goflag.Int("perf.certs", 100000, "certificates seeded per backend by BenchmarkScale")
	perfCached       = goflag.Int("perf.cached", 10000, "certificates BenchmarkScale loads into memory (at most perf.certs)")
	perfNames        = goflag.Int("perf.names", 200, "names BenchmarkIssuance orders")
	perfBurstProfile = goflag.String("perf.burstprofile", "", "file for a CPU profile of BenchmarkIssuance's burst alone (this process)")
	perfLogLevel     = goflag.String("perf.log", "ERROR", "level of Caddy's log in the benchmarks (DEBUG shows every step of an order)")
	perfBackends     = goflag.String("perf.backends", "", "comma-separated storage backends of BenchmarkHandshakeCold and BenchmarkScale (default: all)")
)

// perfCAURL is the ACME directory of the apps of the benchmarks that order
// nothing: nothing listens there, so an order would fail at once.
const perfCAURL = "https://127.0.0.1:1/dir"

// perfIssuerKey is the storage issuer key of perfCAURL.
var perfIssuerKey = (&certmagic.ACMEIssuer{CA: perfCAURL}).IssuerKey()

// perfCA is a test CA issuing leaf certificates that all share one key, as
// many certificates as wanted, fast.
type perfCA struct {
	cert       *x509.Certificate
	key        *ecdsa.PrivateKey
	leafKey    *ecdsa.PrivateKey
	leafKeyPEM []byte
	certPEM    []byte
}

func newPerfCA(tb testing.TB) *perfCA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "caddy-acme perf CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	leafKeyDER, err := x509.MarshalECPrivateKey(leafKey)
	if err != nil {
		tb.Fatal(err)
	}
	return &perfCA{
		cert:       cert,
		key:        key,
		leafKey:    leafKey,
		leafKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: leafKeyDER}),
		certPEM:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}
}

// perfLifetime is the lifetime of the test certificates, Let's Encrypt's.
const perfLifetime = 90 * 24 * time.Hour

// bundle returns a certificate for name and the CA's, in PEM, as an ACME
// CA delivers a chain: valid from an hour ago for perfLifetime, so not due
// for renewal.
func (ca *perfCA) bundle(name string) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(perfLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &ca.leafKey.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca.certPEM...), nil
}

// perfMeta returns the metadata certmagic writes beside name's certificate
// (saveCertResource: the CertificateResource, indented with tabs), with the
// ACME issuer's data: certificate URL, CA, account, and an ARI window as the
// last renewal scan stored it, two thirds into the lifetime, not to be asked
// again for six hours.
func perfMeta(name, caURL string) ([]byte, error) {
	now := time.Now()
	retry := now.Add(6 * time.Hour)
	ari := &acme.RenewalInfo{
		RetryAfter:   &retry,
		SelectedTime: now.Add(61 * 24 * time.Hour),
	}
	ari.SuggestedWindow.Start = now.Add(60 * 24 * time.Hour)
	ari.SuggestedWindow.End = now.Add(62 * 24 * time.Hour)
	issuerData, err := json.Marshal(acme.Certificate{
		URL:         strings.TrimSuffix(caURL, "/dir") + "/certZ/" + name,
		CA:          caURL,
		Account:     strings.TrimSuffix(caURL, "/dir") + "/my-account/1",
		RenewalInfo: ari,
	})
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(certmagic.CertificateResource{SANs: []string{name}, IssuerData: issuerData}, "", "\t")
}

// seedCerts stores a certificate, its key and its metadata for every name
// into s under issuerKey, in the order certmagic's saveCertResource stores
// them, workers at a time, and returns how long it took (issuing the
// certificates included).
func seedCerts(ctx context.Context, s certmagic.Storage, ca *perfCA, issuerKey, caURL string, names []string, workers int) (time.Duration, error) {
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(names) || ctx.Err() != nil {
					return
				}
				if err := seedCert(ctx, s, ca, issuerKey, caURL, names[i]); err != nil {
					errs <- fmt.Errorf("seeding %s: %w", names[i], err)
					next.Store(int64(len(names)))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return time.Since(start), <-errs
}

func seedCert(ctx context.Context, s certmagic.Storage, ca *perfCA, issuerKey, caURL, name string) error {
	bundle, err := ca.bundle(name)
	if err != nil {
		return err
	}
	meta, err := perfMeta(name, caURL)
	if err != nil {
		return err
	}
	for _, kv := range []struct {
		key   string
		value []byte
	}{
		{certmagic.StorageKeys.SitePrivateKey(issuerKey, name), ca.leafKeyPEM},
		{certmagic.StorageKeys.SiteCert(issuerKey, name), bundle},
		{certmagic.StorageKeys.SiteMeta(issuerKey, name), meta},
	} {
		if err := s.Store(ctx, kv.key, kv.value); err != nil {
			return err
		}
	}
	return nil
}

// hostNames returns n names below zone: h000000.zone, h000001.zone, ...
func hostNames(n int, zone string) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("h%06d.%s", i, zone)
	}
	return names
}

// perfBackend is a storage backend on a real server started for the
// benchmark, with the bare driver the storage module is built on.
type perfBackend struct {
	name string
	// storage is the module's JSON config over the namespace ns (a key
	// prefix, path or directory); certificates of different namespaces
	// never see each other.
	storage func(ns string) map[string]any
	// rawGet reads the stored value of the certmagic key k in namespace
	// ns with the bare driver, in one round trip: the storage's floor.
	rawGet func(ctx context.Context, ns, k string) ([]byte, error)
}

// perfBackendNames are the backends of the per-backend benchmarks, in the
// order they run.
var perfBackendNames = []string{"file_system", "acme_redis", "acme_kong", "acme_consul", "acme_vault"}

// selectedBackends returns the backends -perf.backends asks for (all by
// default).
func selectedBackends(tb testing.TB) []string {
	if *perfBackends == "" {
		return perfBackendNames
	}
	var out []string
	for name := range strings.SplitSeq(*perfBackends, ",") {
		if !slices.Contains(perfBackendNames, name) {
			tb.Fatalf("-perf.backends: unknown backend %q (known: %s)", name, strings.Join(perfBackendNames, ", "))
		}
		out = append(out, name)
	}
	return out
}

// startPerfBackend starts the server of backend name and connects its bare
// driver; both end with tb.
func startPerfBackend(tb testing.TB, name string) perfBackend {
	tb.Helper()
	switch name {
	case "file_system":
		root := tb.TempDir()
		return perfBackend{
			name: name,
			storage: func(ns string) map[string]any {
				return map[string]any{"module": "file_system", "root": filepath.Join(root, ns)}
			},
			rawGet: func(_ context.Context, ns, k string) ([]byte, error) {
				return os.ReadFile(filepath.Join(root, ns, filepath.FromSlash(k)))
			},
		}
	case "acme_redis":
		r := testenv.StartRedis(tb, testenv.RedisOptions{})
		c := r.Client(tb)
		return perfBackend{
			name: name,
			storage: func(ns string) map[string]any {
				return map[string]any{"module": "acme_redis", "addresses": []string{r.Addr}, "key_prefix": ns + ":"}
			},
			rawGet: func(ctx context.Context, ns, k string) ([]byte, error) {
				// the value's hash (storage/redis: data layout)
				return c.HGet(ctx, ns+":v:"+k, "value").Bytes()
			},
		}
	case "acme_kong":
		pg := testenv.StartPostgres(tb, testenv.PostgresOptions{})
		pool, err := pgxpool.New(context.Background(), pg.DSN)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(pool.Close)
		return perfBackend{
			name: name,
			storage: func(ns string) map[string]any {
				return map[string]any{"module": "acme_kong", "dsn": pg.DSN, "key_prefix": ns + "/"}
			},
			rawGet: func(ctx context.Context, ns, k string) ([]byte, error) {
				var v []byte
				err := pool.QueryRow(ctx, `SELECT value FROM acme_storage WHERE key = $1`, ns+"/"+k).Scan(&v)
				return v, err
			},
		}
	case "acme_consul":
		c := testenv.StartConsul(tb, testenv.ConsulOptions{})
		client, err := consulapi.NewClient(&consulapi.Config{Address: c.Addr})
		if err != nil {
			tb.Fatal(err)
		}
		return perfBackend{
			name: name,
			storage: func(ns string) map[string]any {
				return map[string]any{"module": "acme_consul", "address": c.Addr, "key_prefix": ns}
			},
			rawGet: func(ctx context.Context, ns, k string) ([]byte, error) {
				pair, _, err := client.KV().Get(ns+"/"+k, (&consulapi.QueryOptions{}).WithContext(ctx))
				if err == nil && pair == nil {
					err = fmt.Errorf("consul: no key %s/%s", ns, k)
				}
				if err != nil {
					return nil, err
				}
				return pair.Value, nil
			},
		}
	case "acme_vault":
		v := testenv.StartVault(tb, testenv.VaultOptions{})
		client, err := vaultapi.NewClient(&vaultapi.Config{Address: v.Addr})
		if err != nil {
			tb.Fatal(err)
		}
		client.SetToken(v.RootToken)
		return perfBackend{
			name: name,
			storage: func(ns string) map[string]any {
				return map[string]any{"module": "acme_vault", "address": v.Addr, "token": v.RootToken, "path_prefix": ns}
			},
			rawGet: func(ctx context.Context, ns, k string) ([]byte, error) {
				secret, err := client.KVv2("secret").Get(ctx, ns+"/"+k)
				if err != nil {
					return nil, err
				}
				s, _ := secret.Data["value"].(string)
				return []byte(s), nil
			},
		}
	}
	tb.Fatalf("unknown backend %s", name)
	return perfBackend{}
}

// openStorage provisions the storage module of cfg (its JSON as a map) in
// the test process, for seeding and raw reads, until the test ends.
func openStorage(tb testing.TB, cfg map[string]any) certmagic.Storage {
	tb.Helper()
	fields := maps.Clone(cfg)
	delete(fields, "module")
	raw, err := json.Marshal(fields)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	tb.Cleanup(cancel)
	val, err := ctx.LoadModuleByID("caddy.storage."+cfg["module"].(string), raw)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := val.(caddy.StorageConverter).CertMagicStorage()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// override sets fields in app (a config as a map), deleting those whose
// value is nil, and returns app.
func override(app, fields map[string]any) map[string]any {
	for k, v := range fields {
		if v == nil {
			delete(app, k)
			continue
		}
		app[k] = v
	}
	return app
}

// perfServer is the listeners of the Caddy the benchmarks load.
type perfServer struct {
	httpsPort, httpPort, adminPort int
	globalStorage                  string
}

func newPerfServer(tb testing.TB) *perfServer {
	return &perfServer{
		httpsPort:     testenv.FreePort(tb),
		httpPort:      testenv.FreePort(tb),
		adminPort:     testenv.FreePort(tb),
		globalStorage: tb.TempDir(),
	}
}

func (s *perfServer) httpsAddr() string { return "127.0.0.1:" + strconv.Itoa(s.httpsPort) }
func (s *perfServer) adminAddr() string { return "127.0.0.1:" + strconv.Itoa(s.adminPort) }

// perfApp is the acme app config for the benchmarks that order nothing:
// names below zone allowed, background work (cache sync, renewal scans)
// too rare to run during a measurement, with fields overridden (nil
// deletes).
func perfApp(zone string, storage map[string]any, fields map[string]any) map[string]any {
	app := map[string]any{
		"account_email":        "perf@example.com",
		"api_uri":              perfCAURL,
		"cert_type":            "ecc",
		"domains":              []string{"*." + zone},
		"cache_sync_interval":  "1h",
		"renew_interval":       "24h",
		"renew_first_delay":    "24h",
		"fail_backoff_minutes": 0,
	}
	if storage != nil {
		app["storage"] = storage
	}
	return override(app, fields)
}

// config is a Caddy config: the acme app, the TLS app with get_certificate
// acme for every name and the certificates of loadPEM in its own cache, an
// HTTPS server, the admin API (for GET /acme/certificates), and with
// challenges an HTTP server answering the CA's HTTP-01 requests.
func (s *perfServer) config(tb testing.TB, acmeApp map[string]any, loadPEM []map[string]any, challenges bool) []byte {
	tb.Helper()
	tlsApp := map[string]any{
		"automation": map[string]any{"policies": []any{
			map[string]any{"get_certificate": []any{map[string]any{"via": "acme"}}},
		}},
		"disable_storage_clean": true,
	}
	if len(loadPEM) > 0 {
		tlsApp["certificates"] = map[string]any{"load_pem": loadPEM}
	}
	servers := map[string]any{
		"https": map[string]any{
			"listen":                  []string{s.httpsAddr()},
			"routes":                  []any{route(map[string]any{"handler": "static_response", "body": "hello"})},
			"tls_connection_policies": []any{map[string]any{}},
			"automatic_https":         map[string]any{"disable": true},
		},
	}
	if challenges {
		servers["http"] = map[string]any{
			"listen":          []string{"127.0.0.1:" + strconv.Itoa(s.httpPort)},
			"routes":          []any{route(map[string]any{"handler": "acme_challenge"})},
			"automatic_https": map[string]any{"disable": true},
		}
	}
	cfg := map[string]any{
		"admin":   map[string]any{"listen": s.adminAddr()},
		"storage": map[string]any{"module": "file_system", "root": s.globalStorage},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": *perfLogLevel}}},
		"apps": map[string]any{
			"acme": acmeApp,
			"tls":  tlsApp,
			"http": map[string]any{"http_port": s.httpPort, "https_port": s.httpsPort, "servers": servers},
		},
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// loadCaddy runs cfg in this process until stopCaddy or the end of tb, and
// returns its acme app.
func loadCaddy(tb testing.TB, cfg []byte) *App {
	tb.Helper()
	if err := caddy.Load(cfg, true); err != nil {
		tb.Fatalf("loading config: %v", err)
	}
	tb.Cleanup(func() { stopCaddy(tb) })
	app, err := caddy.ActiveContext().App("acme")
	if err != nil {
		tb.Fatalf("getting the acme app: %v", err)
	}
	return app.(*App)
}

func stopCaddy(tb testing.TB) {
	if err := caddy.Stop(); err != nil {
		tb.Errorf("stopping caddy: %v", err)
	}
}

// handshake makes one full TLS handshake (no session resumption) with
// addr for name and returns the leaf served, checking that it is name's.
// The chain is not verified against roots (roots is nil) unless given: the
// client's work is the same for every name either way.
func handshake(ctx context.Context, addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &tls.Dialer{Config: &tls.Config{
		ServerName:             name,
		RootCAs:                roots,
		InsecureSkipVerify:     roots == nil, //nolint:gosec // benchmark client; the leaf's name is checked below
		SessionTicketsDisabled: true,
	}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	if !slices.Contains(certs[0].DNSNames, name) {
		return nil, fmt.Errorf("served a certificate for %v, want %s", certs[0].DNSNames, name)
	}
	return certs[0], nil
}

// storageOps returns the number of storage operations of backend recorded
// so far, by operation (the counts of the duration histogram).
func storageOps(backend string) map[string]uint64 {
	out := make(map[string]uint64)
	for _, s := range gatherMetrics()["caddy_acme_storage_operation_duration_seconds"].GetMetric() {
		if hasLabels(s, map[string]string{"backend": backend}) {
			out[labelValue(s, "operation")] = s.GetHistogram().GetSampleCount()
		}
	}
	return out
}

// evict drops name's certificates from the app's memory.
func evict(app *App, name string) {
	var hashes []string
	for _, c := range app.cache.AllMatchingCertificates(name) {
		hashes = append(hashes, c.Hash())
	}
	app.cache.Remove(hashes)
}

// gatherMetrics gathers the process-wide metrics of package issuance.
func gatherMetrics() map[string]*dto.MetricFamily {
	reg := prometheus.NewRegistry()
	if err := issuance.RegisterMetrics(reg, nil); err != nil {
		panic(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	return testenv.IndexFamilies(mfs)
}

// hasLabels reports whether the series m has every label of labels.
func hasLabels(m *dto.Metric, labels map[string]string) bool {
	for k, v := range labels {
		if labelValue(m, k) != v {
			return false
		}
	}
	return true
}

// labelValue is the value of the series m's label name ("" if none).
func labelValue(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// opsSince returns the operations recorded since before, without zeros.
func opsSince(backend string, before map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64)
	for op, n := range storageOps(backend) {
		if d := n - before[op]; d > 0 {
			out[op] = d
		}
	}
	return out
}
