package caddyacme

// The performance benchmarks of issue 6 (items 5-7), run by `make bench`
// (BENCHMARKS.md has the figures and the commands). Every figure is
// reported beside its baseline measured in the same run, as b.ReportMetric
// values and in a readable b.Log summary; none is asserted, except that
// what a benchmark does works (a failed handshake fails it) and that
// cached handshakes touch no storage.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"math"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/appconfig"
	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/issuance"
)

// BenchmarkHandshakeCached (issue 6 item 5a) compares full TLS handshakes
// (TLS 1.3, no session resumption, a new connection each) with a Caddy
// loaded in this process for two names of one config:
//
//   - acme: served by get_certificate acme, from the app's memory (the
//     certificate was loaded from storage by a first handshake);
//   - caddy: served by Caddy's TLS app itself from its own certificate
//     cache, where certificates.load_pem put it. That is the path of every
//     certificate Caddy manages (automated or loaded): a lookup in the TLS
//     app's certmagic cache during the handshake, nothing else. load_pem
//     puts it there without an ACME CA.
//
// Both certificates are issued by one CA for the same key, so the
// cryptography of both handshakes is the same. "sequential" is one client
// alternating the two names; "parallel" is 4×GOMAXPROCS clients, each
// alternating. handshakes/s per name is clients ÷ its median handshake
// time (and, besides, ÷ the mean); ratio is acme's handshakes/s ÷ caddy's
// (goal ≥ 0.95).
func BenchmarkHandshakeCached(b *testing.B) {
	ctx := context.Background()
	const zone = "perf.example.com"
	acmeName, caddyName := "acme."+zone, "caddy.tls.example.net" // not allowed by the app: only Caddy can serve it
	ca := newPerfCA(b)
	root := b.TempDir()
	if err := seedCert(ctx, &certmagic.FileStorage{Path: root}, ca, perfIssuerKey, perfCAURL, acmeName); err != nil {
		b.Fatal(err)
	}
	caddyBundle, err := ca.bundle(caddyName)
	if err != nil {
		b.Fatal(err)
	}
	srv := newPerfServer(b)
	loadCaddy(b, srv.config(b,
		perfApp(zone, map[string]any{"module": "file_system", "root": root}, nil),
		[]map[string]any{{"certificate": string(caddyBundle), "key": string(ca.leafKeyPEM)}},
		false))
	names := [2]string{acmeName, caddyName}
	for _, name := range names {
		if _, err := handshake(ctx, srv.httpsAddr(), name, nil); err != nil {
			b.Fatalf("first handshake for %s: %v", name, err)
		}
	}
	before := storageOps("file_system")

	b.Run("sequential", func(b *testing.B) {
		var took [2][]time.Duration
		i := 0
		for b.Loop() {
			for j := range 2 {
				k := (i + j) % 2 // each name goes first every other time
				start := time.Now()
				if _, err := handshake(ctx, srv.httpsAddr(), names[k], nil); err != nil {
					b.Fatal(err)
				}
				took[k] = append(took[k], time.Since(start))
			}
			i++
		}
		reportHandshakePair(b, 1, took)
	})

	b.Run("parallel", func(b *testing.B) {
		b.SetParallelism(4)
		var mu sync.Mutex // protects took
		var took [2][]time.Duration
		var clients atomic.Int32
		b.RunParallel(func(pb *testing.PB) {
			clients.Add(1)
			var mine [2][]time.Duration
			k := mathrand.IntN(2)
			for pb.Next() {
				start := time.Now()
				if _, err := handshake(ctx, srv.httpsAddr(), names[k], nil); err != nil {
					b.Error(err)
					return
				}
				mine[k] = append(mine[k], time.Since(start))
				k = 1 - k
			}
			mu.Lock()
			took[0], took[1] = append(took[0], mine[0]...), append(took[1], mine[1]...)
			mu.Unlock()
		})
		reportHandshakePair(b, int(clients.Load()), took)
	})

	if ops := opsSince("file_system", before); len(ops) > 0 {
		b.Fatalf("cached handshakes performed storage operations %v", ops)
	}
}

// reportHandshakePair reports the handshakes/s of the acme name (took[0])
// and of Caddy's own (took[1]) with clients concurrent clients, and their
// ratio: from the median handshake (robust to the pauses of a shared
// machine: the primary figure) and from the mean.
func reportHandshakePair(b *testing.B, clients int, took [2][]time.Duration) {
	if len(took[0]) == 0 || len(took[1]) == 0 {
		return
	}
	acmeP50, caddyP50 := pct(took[0], 50), pct(took[1], 50)
	acmeMean, caddyMean := mean(took[0]), mean(took[1])
	rate := func(d time.Duration) float64 { return float64(clients) / d.Seconds() }
	b.ReportMetric(rate(acmeP50), "acme-hs/s")
	b.ReportMetric(rate(caddyP50), "caddy-hs/s")
	b.ReportMetric(rate(acmeP50)/rate(caddyP50), "ratio")
	b.ReportMetric(rate(acmeMean)/rate(caddyMean), "ratio-of-means")
	b.Logf("%d client(s), %d+%d handshakes: get_certificate acme %.0f/s (p50 %s, mean %s), Caddy's own cache %.0f/s (p50 %s, mean %s): ratio %.3f (of means %.3f)",
		clients, len(took[0]), len(took[1]),
		rate(acmeP50), acmeP50.Round(time.Microsecond), acmeMean.Round(time.Microsecond),
		rate(caddyP50), caddyP50.Round(time.Microsecond), caddyMean.Round(time.Microsecond),
		rate(acmeP50)/rate(caddyP50), rate(acmeMean)/rate(caddyMean))
}

// coldNames is how many certificates BenchmarkHandshakeCold stores per
// backend; its handshakes cycle through them.
const coldNames = 1000

// BenchmarkHandshakeCold (issue 6 item 5b) measures, per storage backend,
// a handshake for a name whose certificate is only in storage: before each
// one the certificate is evicted from the app's memory, so the handshake
// loads it (key, certificate and metadata in one batch, and no OCSP staple
// lookup for these leaves without a responder: issuance's certLoad) and
// caches it. Each iteration also times, on the same name,
// the bare driver's GET of the certificate's key (the storage floor) and a
// second, cached, handshake (the TLS floor). cold_local_cache repeats the
// cold handshake with certmagic's node-local cache (Config.LocalCache, a
// FileStorage in a temporary directory) in front of the backend, warmed
// with the first 200 names.
func BenchmarkHandshakeCold(b *testing.B) {
	ctx := context.Background()
	const zone, ns = "cold.example.com", "cold"
	ca := newPerfCA(b)
	names := hostNames(coldNames, zone)
	for _, backend := range selectedBackends(b) {
		b.Run(backend, func(b *testing.B) {
			be := startPerfBackend(b, backend)
			raw := openStorage(b, be.storage(ns))
			took, err := seedCerts(ctx, raw, ca, perfIssuerKey, perfCAURL, names, 16)
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("seeded %d certificates in %s", len(names), took.Round(time.Millisecond))
			if v, err := be.rawGet(ctx, ns, certmagic.StorageKeys.SiteCert(perfIssuerKey, names[0])); err != nil || !bytes.Contains(v, []byte("BEGIN CERTIFICATE")) {
				b.Fatalf("the bare driver does not read the stored certificate: %v %q", err, v)
			}
			srv := newPerfServer(b)
			app := loadCaddy(b, srv.config(b, perfApp(zone, be.storage(ns), nil), nil, false))

			b.Run("cold", func(b *testing.B) {
				coldHandshakes(b, app, srv, be, ns, names)
			})
			b.Run("cold_local_cache", func(b *testing.B) {
				app.magic.LocalCache = &certmagic.FileStorage{Path: b.TempDir()}
				defer func() { app.magic.LocalCache = nil }()
				warm := names[:200]
				for _, name := range warm {
					evict(app, name)
					if _, err := handshake(ctx, srv.httpsAddr(), name, nil); err != nil {
						b.Fatal(err)
					}
				}
				coldHandshakes(b, app, srv, be, ns, warm)
			})
		})
	}
}

// coldHandshakes is BenchmarkHandshakeCold's loop over names.
func coldHandshakes(b *testing.B, app *App, srv *perfServer, be perfBackend, ns string, names []string) {
	ctx := context.Background()
	var raw, cold, cached []time.Duration
	before := storageOps(be.name)
	i := 0
	for b.Loop() {
		name := names[i%len(names)]
		i++
		t0 := time.Now()
		if _, err := be.rawGet(ctx, ns, certmagic.StorageKeys.SiteCert(perfIssuerKey, name)); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		evict(app, name)
		t2 := time.Now()
		if _, err := handshake(ctx, srv.httpsAddr(), name, nil); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		if _, err := handshake(ctx, srv.httpsAddr(), name, nil); err != nil {
			b.Fatal(err)
		}
		raw, cold, cached = append(raw, t1.Sub(t0)), append(cold, t3.Sub(t2)), append(cached, time.Since(t3))
	}
	ops := opsSince(be.name, before)
	b.ReportMetric(float64(pct(cold, 50).Nanoseconds()), "cold-p50-ns")
	b.ReportMetric(float64(pct(cold, 99).Nanoseconds()), "cold-p99-ns")
	b.ReportMetric(float64(pct(raw, 50).Nanoseconds()), "raw-get-p50-ns")
	b.ReportMetric(float64(pct(raw, 99).Nanoseconds()), "raw-get-p99-ns")
	b.ReportMetric(float64(pct(cached, 50).Nanoseconds()), "cached-p50-ns")
	b.ReportMetric(float64(ops["load"])/float64(i), "loads/handshake")
	b.ReportMetric(float64(ops["load_many"])/float64(i), "batches/handshake")
	b.Logf("%s, %d cold handshakes: p50 %s p99 %s; same run: bare GET of the certificate p50 %s p99 %s, cached handshake p50 %s; storage operations per cold handshake %s",
		be.name, i, us(pct(cold, 50)), us(pct(cold, 99)), us(pct(raw, 50)), us(pct(raw, 99)), us(pct(cached, 50)), perOp(ops, i))
}

// BenchmarkScale (issue 6 item 6) stores -perf.certs certificates (default
// 100 000) per backend, then measures:
//
//   - seed: how long storing them took (32 at once, through the storage
//     module, issuing the certificates included); not a figure of the app.
//   - cold_start: loading the config (provisioning and starting the app and
//     Caddy) and the first handshake for a random stored name; baseline:
//     the same over a namespace of the same server holding one certificate.
//   - memory: heap growth per certificate for -perf.cached certificates
//     (default 10 000) loaded into the app's memory, after GC; baseline: a
//     bare certmagic Cache and Config loading the same certificates from
//     the same storage.
//   - renewal_scan: a renewal scan with no certificate due (every one read,
//     its ARI window parsed, the status saved), counting storage
//     operations; baselines: listing and reading the same keys through the
//     storage alone, in batches of the same size (loadMany), no parsing;
//     and the same reads with the bare driver (rawGet), one round trip per
//     key, issuance.LoadParallelism in flight (the pattern of the storages
//     without a batch read: Vault, the file system).
//   - admin_list: GET /acme/certificates?limit=100, the first page (which
//     lists storage) and a next page after a random name (which may reuse
//     that listing), and walking all pages; baseline: the storage's List
//     of the certificates' directory.
func BenchmarkScale(b *testing.B) {
	ctx := context.Background()
	const zone = "scale.example.com"
	n, cachedN := *perfCerts, min(*perfCached, *perfCerts)
	ca := newPerfCA(b)
	names := hostNames(n, zone)
	for _, backend := range selectedBackends(b) {
		b.Run(backend, func(b *testing.B) {
			be := startPerfBackend(b, backend)
			raw := openStorage(b, be.storage("scale"))
			took, err := seedCerts(ctx, raw, ca, perfIssuerKey, perfCAURL, names, 32)
			if err != nil {
				b.Fatal(err)
			}
			b.Run("seed", func(b *testing.B) {
				for b.Loop() {
				}
				b.ReportMetric(took.Seconds(), "seed-s")
				b.ReportMetric(float64(n)/took.Seconds(), "certs/s")
				b.Logf("%s: seeded %d certificates (%d keys, 32 at once, issuing included) in %s: %.0f certificates/s",
					be.name, n, 3*n, took.Round(time.Millisecond), float64(n)/took.Seconds())
			})
			if _, err := seedCerts(ctx, openStorage(b, be.storage("one")), ca, perfIssuerKey, perfCAURL, names[:1], 1); err != nil {
				b.Fatal(err)
			}
			srv := newPerfServer(b)
			cfg := func(ns string) []byte {
				return srv.config(b, perfApp(zone, be.storage(ns), map[string]any{"cache_capacity": max(cachedN, appconfig.DefaultCacheCapacity)}), nil, false)
			}

			b.Run("cold_start", func(b *testing.B) {
				var full, one [2][]time.Duration // load, first handshake
				for b.Loop() {
					for _, c := range slices.Repeat([]struct {
						ns  string
						out *[2][]time.Duration
						n   int
					}{{"one", &one, 1}, {"scale", &full, n}}, coldStarts) {
						name := names[mathrand.IntN(c.n)]
						start := time.Now()
						if err := caddy.Load(cfg(c.ns), true); err != nil {
							b.Fatal(err)
						}
						loaded := time.Now()
						if _, err := handshake(ctx, srv.httpsAddr(), name, nil); err != nil {
							b.Fatal(err)
						}
						c.out[0], c.out[1] = append(c.out[0], loaded.Sub(start)), append(c.out[1], time.Since(loaded))
						stopCaddy(b)
					}
				}
				fullTotal, oneTotal := pct(sum2(full), 50), pct(sum2(one), 50)
				b.ReportMetric(float64(fullTotal.Nanoseconds()), "start+first-hs-p50-ns")
				b.ReportMetric(float64(oneTotal.Nanoseconds()), "baseline-p50-ns")
				b.ReportMetric(fullTotal.Seconds()/oneTotal.Seconds(), "ratio")
				b.Logf("%s, %d certificates in storage: config load p50 %s + first handshake p50 %s = %s; 1 certificate in storage (same run): %s + %s = %s; ratio %.2f",
					be.name, n, ms(pct(full[0], 50)), ms(pct(full[1], 50)), ms(fullTotal), ms(pct(one[0], 50)), ms(pct(one[1], 50)), ms(oneTotal), fullTotal.Seconds()/oneTotal.Seconds())
			})

			app := loadCaddy(b, cfg("scale"))

			b.Run("memory", func(b *testing.B) {
				for b.Loop() {
					bare := bareCacheHeap(b, raw, names[:cachedN])
					appHeap, heap, rss := appCacheHeap(b, app, names[:cachedN])
					b.ReportMetric(appHeap, "B/cert")
					b.ReportMetric(bare, "bare-certmagic-B/cert")
					b.ReportMetric(appHeap/bare, "ratio")
					b.Logf("%s, %d certificates in the app's memory: %.0f B of heap each (process: heap %d MiB, RSS %d MiB); a bare certmagic Cache holding the same (same run): %.0f B each; ratio %.2f",
						be.name, cachedN, appHeap, heap>>20, rss>>20, bare, appHeap/bare)
				}
			})

			b.Run("renewal_scan", func(b *testing.B) {
				renewalScans(b, app, raw, func(ctx context.Context, k string) error {
					_, err := be.rawGet(ctx, "scale", k)
					return err
				}, be.name, n)
			})

			b.Run("admin_list", func(b *testing.B) {
				adminList(b, srv, raw, names)
			})
		})
	}
}

// coldStarts is how many cold starts of each kind an iteration of
// BenchmarkScale/cold_start makes, alternating.
const coldStarts = 5

// bareCacheHeap returns the heap per certificate of a bare certmagic Cache
// holding names' certificates loaded from s (CacheManagedCertificate, as
// the app does), measured after GC.
func bareCacheHeap(b *testing.B, s certmagic.Storage, names []string) float64 {
	ctx := context.Background()
	before := heapAfterGC()
	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		Capacity:         len(names),
		Logger:           zap.NewNop(),
	})
	defer cache.Stop()
	cfg = certmagic.New(cache, certmagic.Config{Storage: s, Logger: zap.NewNop()})
	cfg.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{CA: perfCAURL, Logger: zap.NewNop()})}
	inParallel(b, names, 16, func(name string) error {
		_, err := cfg.CacheManagedCertificate(ctx, name)
		return err
	})
	if got := cachedCount(cache, names); got != len(names) {
		b.Fatalf("bare cache holds %d certificates, want %d", got, len(names))
	}
	after := heapAfterGC()
	runtime.KeepAlive(cache)
	return float64(int64(after)-int64(before)) / float64(len(names))
}

// appCacheHeap loads names' certificates into the app's memory as a cold
// handshake does, and returns the heap per certificate (after GC), the
// process's heap and RSS then; it evicts them again.
func appCacheHeap(b *testing.B, app *App, names []string) (perCert float64, heap, rss uint64) {
	before := heapAfterGC()
	inParallel(b, names, 16, func(name string) error {
		_, err := app.rt.Certificate(context.Background(), &tls.ClientHelloInfo{ServerName: name})
		return err
	})
	if got := cachedCount(app.cache, names); got != len(names) {
		b.Fatalf("the app's cache holds %d certificates, want %d", got, len(names))
	}
	heap = heapAfterGC()
	rss = processRSS()
	perCert = float64(int64(heap)-int64(before)) / float64(len(names))
	for _, name := range names {
		evict(app, name)
	}
	return perCert, heap, rss
}

// renewalScans runs renewal scans of the app's n stored certificates, none
// due, and the two baselines (the storage alone, the bare driver's reads of
// the same keys: rawGet), alternately.
func renewalScans(b *testing.B, app *App, raw certmagic.Storage, rawGet func(ctx context.Context, k string) error, backend string, n int) {
	var scans, floors, raws []time.Duration
	var ops map[string]uint64
	var opTime map[string]float64
	for b.Loop() {
		for round := 0; round < scanRounds && (round == 0 || scans[len(scans)-1] < 20*time.Second); round++ {
			scan, floor, o, t := renewalScan(b, app.rt, raw, backend, n)
			scans, floors, ops, opTime = append(scans, scan), append(floors, floor), o, t
			raws = append(raws, rawReads(b, raw, rawGet, n))
		}
	}
	scan, floor, bare := pct(scans, 50), pct(floors, 50), pct(raws, 50)
	per10k := scan.Seconds() * 10000 / float64(n)
	b.ReportMetric(scan.Seconds(), "scan-s")
	b.ReportMetric(per10k, "s/10k")
	b.ReportMetric(floor.Seconds(), "storage-only-s")
	b.ReportMetric(bare.Seconds(), "raw-reads-s")
	b.ReportMetric(scan.Seconds()/floor.Seconds(), "ratio")
	b.ReportMetric(scan.Seconds()/bare.Seconds(), "ratio-raw")
	b.ReportMetric(float64(ops["load_many"]), "load_many/scan")
	b.ReportMetric(float64(ops["load"]), "load/scan")
	b.Logf("%s, scan of %d certificates, none due: p50 %s = %.2f s per 10k (goal ≤ 2 s on Redis); storage only (list + read in batches, same run): %s, ratio %.2f; the bare driver's reads of the same %d keys, %d in flight (same run): %s = %.2f s per 10k, ratio %.2f; storage operations of the last scan: %s; their summed time: %s",
		backend, n, scan.Round(time.Millisecond), per10k, floor.Round(time.Millisecond), scan.Seconds()/floor.Seconds(),
		2*n, issuance.LoadParallelism, bare.Round(time.Millisecond), bare.Seconds()*10000/float64(n), scan.Seconds()/bare.Seconds(),
		perOp(ops, 1), secondsByOp(opTime))
}

// rawReads lists the certificates of raw (through the storage, one List)
// and reads each one's certificate and metadata with the bare driver
// (rawGet), issuance.LoadParallelism at once; it returns how long it took.
func rawReads(b *testing.B, raw certmagic.Storage, rawGet func(ctx context.Context, k string) error, want int) time.Duration {
	ctx := context.Background()
	start := time.Now()
	keys, err := scanKeys(ctx, raw, want)
	if err != nil {
		b.Fatal(err)
	}
	inParallel(b, keys, issuance.LoadParallelism, func(k string) error { return rawGet(ctx, k) })
	return time.Since(start)
}

// scanRounds is how many scans (each with its baseline) an iteration of
// BenchmarkScale/renewal_scan makes, unless one takes over 20 s.
const scanRounds = 3

// renewalScan runs one scan of rt, checking that it saw n
// certificates and none due, then the storage-only baseline; it returns
// both durations and the scan's storage operations and their summed time.
func renewalScan(b *testing.B, rt *issuance.Runtime, raw certmagic.Storage, backend string, n int) (scan, floor time.Duration, ops map[string]uint64, opTime map[string]float64) {
	ctx := context.Background()
	before, beforeTime := storageOps(backend), storageTime(backend)
	start := time.Now()
	st, err := rt.Scan(ctx)
	if err != nil {
		b.Fatal(err)
	}
	scan = time.Since(start)
	ops, opTime = opsSince(backend, before), timeSince(backend, beforeTime)
	if st.Checked != n || st.Due != 0 || st.Failed != 0 {
		b.Fatalf("scan checked %d, due %d, failed %d; want %d, 0, 0", st.Checked, st.Due, st.Failed, n)
	}
	start = time.Now()
	if err := readAllCerts(ctx, raw, n); err != nil {
		b.Fatal(err)
	}
	return scan, time.Since(start), ops, opTime
}

// readAllCerts lists the certificates in s and reads each one's
// certificate and metadata, in batches of the scan's size, as the scan
// does but without parsing.
func readAllCerts(ctx context.Context, s certmagic.Storage, want int) error {
	keys, err := scanKeys(ctx, s, want)
	if err != nil {
		return err
	}
	const batch = 2 * 256 // renew.Scanner's default, two keys each
	for len(keys) > 0 {
		k := min(batch, len(keys))
		_, errs := issuance.LoadMany(ctx, s, keys[:k])
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		keys = keys[k:]
	}
	return nil
}

// scanKeys lists the certificates in s (want of them) and returns the keys
// a renewal scan reads: each one's certificate and metadata.
func scanKeys(ctx context.Context, s certmagic.Storage, want int) ([]string, error) {
	dirs, err := s.List(ctx, certmagic.StorageKeys.CertsPrefix(perfIssuerKey), false)
	if err != nil {
		return nil, err
	}
	if len(dirs) != want {
		return nil, fmt.Errorf("listed %d certificates, want %d", len(dirs), want)
	}
	keys := make([]string, 0, 2*len(dirs))
	for _, dir := range dirs {
		name := dir[strings.LastIndexByte(dir, '/')+1:]
		keys = append(keys, certmagic.StorageKeys.SiteCert(perfIssuerKey, name), certmagic.StorageKeys.SiteMeta(perfIssuerKey, name))
	}
	return keys, nil
}

// adminWalkLimit bounds the walk through every page of GET
// /acme/certificates; a longer walk is extrapolated from the pages walked.
const adminWalkLimit = 10 * time.Minute

// adminPages is how many first pages, random next pages and storage Lists
// (the baseline) an iteration of BenchmarkScale/admin_list fetches.
const adminPages = 10

// adminList measures GET /acme/certificates pages of 100 on Caddy's admin
// endpoint, and the storage's List as the baseline.
func adminList(b *testing.B, srv *perfServer, raw certmagic.Storage, names []string) {
	ctx := context.Background()
	client := &http.Client{Timeout: 5 * time.Minute}
	page := func(after string) (hosts int, next string, err error) {
		u := "http://" + srv.adminAddr() + "/acme/certificates?limit=100"
		if after != "" {
			u += "&after=" + url.QueryEscape(after)
		}
		resp, err := client.Get(u)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, "", err
		}
		if resp.StatusCode != http.StatusOK {
			return 0, "", fmt.Errorf("GET %s: %s: %s", u, resp.Status, body)
		}
		var out struct {
			Data []json.RawMessage `json:"data"`
			Next string            `json:"next"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return 0, "", err
		}
		return len(out.Data), out.Next, nil
	}

	var firsts, nexts, lists []time.Duration
	for b.Loop() {
		for range adminPages {
			// the first page of a listing lists storage
			start := time.Now()
			got, _, err := page("")
			if err != nil {
				b.Fatal(err)
			}
			firsts = append(firsts, time.Since(start))
			if got != min(100, len(names)) {
				b.Fatalf("first page has %d certificates, want 100", got)
			}
			// a next page may reuse that listing
			after := names[mathrand.IntN(max(len(names)-100, 1))]
			start = time.Now()
			if got, _, err = page(after); err != nil {
				b.Fatal(err)
			}
			nexts = append(nexts, time.Since(start))
			if got != min(100, len(names)-1) {
				b.Fatalf("page after %s has %d certificates, want 100", after, got)
			}
			start = time.Now()
			if _, err := raw.List(ctx, certmagic.StorageKeys.CertsPrefix(perfIssuerKey), false); err != nil {
				b.Fatal(err)
			}
			lists = append(lists, time.Since(start))
		}
	}

	// walk every page once
	start := time.Now()
	walked, pagesWalked, after := 0, 0, ""
	for {
		got, nextAfter, err := page(after)
		if err != nil {
			b.Fatal(err)
		}
		walked += got
		pagesWalked++
		if nextAfter == "" || time.Since(start) > adminWalkLimit {
			break
		}
		after = nextAfter
	}
	walk := time.Since(start)
	complete := walked == len(names)
	if !complete {
		// stopped at adminWalkLimit: extrapolated, and said so
		walk = time.Duration(float64(walk) * float64(len(names)) / float64(walked))
	}
	first, next, list := pct(firsts, 50), pct(nexts, 50), pct(lists, 50)
	b.ReportMetric(float64(first.Nanoseconds()), "first-page-p50-ns")
	b.ReportMetric(float64(next.Nanoseconds()), "next-page-p50-ns")
	b.ReportMetric(float64(list.Nanoseconds()), "raw-list-p50-ns")
	b.ReportMetric(first.Seconds()/list.Seconds(), "ratio")
	b.ReportMetric(walk.Seconds(), "walk-all-s")
	how := "walked"
	if !complete {
		how = fmt.Sprintf("EXTRAPOLATED from %d pages (%d certificates) walked in %s", pagesWalked, walked, adminWalkLimit)
	}
	b.Logf("GET /acme/certificates?limit=100, %d certificates: first page p50 %s p99 %s, a next page p50 %s p99 %s; storage List of them (same run) p50 %s, first page ratio %.2f; all %d pages %s in %s",
		len(names), ms(first), ms(pct(firsts, 99)), ms(next), ms(pct(nexts, 99)), ms(list), first.Seconds()/list.Seconds(), (len(names)+99)/100, how, walk.Round(time.Millisecond))
}

// BenchmarkIssuance (issue 6 item 7) orders -perf.names names (default
// 200) on demand, all at once, through real TLS handshakes with a Caddy in
// this process, against Pebble (PEBBLE_VA_NOSLEEP=1: no validation delay,
// internal/testenv), with file system and Redis storage; and, as the
// baselines, with a bare acmez client placing as many orders at once,
// first and last, and the same client on demand (pebble_bare_acmez_on_demand:
// a crypto/tls server whose GetCertificate orders the name, one client
// handshake per name as here: the TLS work of the app's runs, without
// storage, locks, cache or certmagic).
//
// Each app run has an account of its own (so certmagic's internal order
// rate limiter, 10 orders per 10 s per account and CA, starts afresh),
// registered by one handshake before the burst, as on a server that has
// issued before; "new_account" runs let the burst register it. The
// variants: certmagic_limiter (certmagic's default limiter, which the app
// leaves alone since it is process-wide), limiter_raised (raised out of
// the way, so that the limit left is Pebble's or the app's), both with
// issue_timeout 900s so that every order's time is measured; and defaults
// (issue_timeout 90s, the default: a handshake waits that long, and so
// does the order once it has left the app's queue).
//
// A client whose handshake fails (Caddy's HTTP server gives a TLS
// handshake at most its read_header_timeout, 1 minute by default) tries
// again a second later, as browsers do, until served or until 15 minutes
// have passed: "time to certificate" is until its
// first successful handshake, "failed first" counts the handshakes that
// failed, "not served" the names never served. The lock wait is the
// summed duration of the app's storage Lock calls
// (caddy_acme_storage_operation_duration_seconds{operation="lock"}),
// which includes waiting for another holder; "over 100 ms" counts the
// Lock calls that took longer (from the histogram's buckets).
//
// Every run has a Pebble of its own: Pebble v2.10.3's in-memory database
// deadlocks now and then under such bursts (a lock-order inversion between
// the database's RWMutex and an authorization's, seen in its goroutine
// dump: new-order's FindValidAuthorization holds the first and waits for
// the second, a writer waits for the first). A watchdog notices when no
// name was served for 20 s and Pebble no longer answers a new-account
// request; the run is then abandoned and made again with a new Pebble, at
// most issuanceAttempts times, and the abandoned attempts are reported.
func BenchmarkIssuance(b *testing.B) {
	defer func(n int) { certmagic.RateLimitEvents = n }(certmagic.RateLimitEvents)
	n := *perfNames
	srv := newPerfServer(b)
	backends := map[string]perfBackend{
		"file_system": startPerfBackend(b, "file_system"),
		"acme_redis":  startPerfBackend(b, "acme_redis"),
	}
	run := 0
	zone := func() string {
		run++
		return fmt.Sprintf("r%d.issue.example.com", run)
	}

	bare := func(tlsAddr string) func(b *testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				withPebble(b, srv, func(pebble *testenv.Pebble, stuck func() bool) (issuanceRun, bool) {
					return bareOrders(b, pebble, srv.httpPort, tlsAddr, hostNames(n, zone()), stuck)
				})
			}
		}
	}
	b.Run("pebble_bare_acmez", bare(""))
	b.Run("pebble_bare_acmez_on_demand", bare(srv.httpsAddr()))
	for _, v := range []struct{ backend, variant string }{
		{"file_system", "limiter_raised"},
		{"file_system", "limiter_raised_new_account"},
		{"acme_redis", "limiter_raised"},
		{"acme_redis", "limiter_raised_new_account"},
		{"file_system", "certmagic_limiter"},
		{"acme_redis", "certmagic_limiter"},
		{"file_system", "defaults"},
		{"acme_redis", "defaults"},
	} {
		b.Run(v.backend+"/"+v.variant, func(b *testing.B) {
			certmagic.RateLimitEvents = 10 // certmagic's default
			if strings.HasPrefix(v.variant, "limiter_raised") {
				certmagic.RateLimitEvents = 100000
			}
			for b.Loop() {
				withPebble(b, srv, func(pebble *testenv.Pebble, stuck func() bool) (issuanceRun, bool) {
					z := zone()
					app := map[string]any{
						"account_email": "perf-" + strings.ReplaceAll(z, ".", "-") + "@example.com", // a new account, and a new rate limiter
						"api_uri":       pebble.DirectoryURL,
						"trusted_roots": []string{pebble.ListenerCAFile},
						"http_port":     srv.httpPort,
						"cert_type":     "ecc",
						"domains":       []string{"*.issue.example.com"},
						"issue_timeout": "900s", // so that every order's time is measured
						"domain_budget": 0,      // the names share a registered domain
						"storage":       backends[v.backend].storage(z),
					}
					if v.variant == "defaults" {
						delete(app, "issue_timeout") // 90s
					}
					warmUp := "warmup." + z
					if strings.HasSuffix(v.variant, "new_account") {
						warmUp = ""
					}
					return appOrders(b, srv, pebble, v.backend, app, warmUp, hostNames(n, z), 15*time.Minute, stuck)
				})
			}
		})
	}
	b.Run("pebble_bare_acmez_after", bare(""))
}

// issuanceAttempts is how many times BenchmarkIssuance makes a run whose
// Pebble deadlocked.
const issuanceAttempts = 6

// withPebble makes one run of BenchmarkIssuance with a new Pebble, again
// with another if that one deadlocks (at most issuanceAttempts times), and
// reports it. run returns the outcome and whether it was abandoned because
// stuck said Pebble deadlocked.
func withPebble(b *testing.B, srv *perfServer, run func(pebble *testenv.Pebble, stuck func() bool) (issuanceRun, bool)) {
	for attempt := 1; ; attempt++ {
		pebble := testenv.StartPebble(b, testenv.PebbleOptions{HTTPPort: srv.httpPort})
		r, abandoned := run(pebble, func() bool { return pebbleStuck(pebble) })
		if !abandoned {
			r.deadlocks = attempt - 1
			reportIssuance(b, r)
			return
		}
		b.Logf("attempt %d abandoned: Pebble deadlocked (it no longer answers a new-account request)", attempt)
		if attempt == issuanceAttempts {
			b.Fatalf("Pebble deadlocked in %d attempts", attempt)
		}
	}
}

// pebbleStuck reports whether Pebble fails to answer a new-account request
// (which takes its database lock) within 10 s.
func pebbleStuck(pebble *testenv.Pebble) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false
	}
	client := &acme.Client{Directory: pebble.DirectoryURL, HTTPClient: pebbleHTTPClient(pebble)}
	_, err = client.NewAccount(ctx, acme.Account{Contact: []string{"mailto:probe@example.com"}, TermsOfServiceAgreed: true, PrivateKey: key})
	return err != nil && ctx.Err() != nil
}

// pebbleHTTPClient is an HTTP client for Pebble's ACME API, with HTTP/2 as
// certmagic's.
func pebbleHTTPClient(pebble *testenv.Pebble) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pebble.ListenerCAPEM)
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true},
		Timeout:   30 * time.Second,
	}
}

// watchdog calls abandon when no name has been served (served) for 20 s
// while some are left and stuck says Pebble deadlocked; it stops when
// done is closed.
func watchdog(served *atomic.Int32, total int, stuck func() bool, abandon func(), done <-chan struct{}) {
	last, since := served.Load(), time.Now()
	for {
		select {
		case <-done:
			return
		case <-time.After(5 * time.Second):
		}
		if now := served.Load(); now != last || int(now) == total {
			last, since = now, time.Now()
			continue
		}
		if time.Since(since) > 20*time.Second && stuck() {
			abandon()
			return
		}
	}
}

// appOrders loads a Caddy with acmeApp, makes a handshake for warmUp (if
// not "", registering the account), then one for every name at once, each
// ordering its certificate, retrying failed handshakes every second until
// giveUp. It returns the outcome, or abandoned if Pebble deadlocked.
func appOrders(b *testing.B, srv *perfServer, pebble *testenv.Pebble, backend string, acmeApp map[string]any, warmUp string, names []string, giveUp time.Duration, stuck func() bool) (r issuanceRun, abandoned bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := caddy.Load(srv.config(b, acmeApp, nil, true), true); err != nil {
		b.Fatal(err)
	}
	defer stopCaddy(b)
	roots := pebble.RootPool(b)
	if warmUp != "" {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := handshake(wctx, srv.httpsAddr(), warmUp, roots)
		wcancel()
		if err != nil {
			if stuck() {
				return r, true
			}
			b.Fatalf("warm-up handshake: %v", err)
		}
	}
	lock := metricSeries{"caddy_acme_storage_operation_duration_seconds", map[string]string{"backend": backend, "operation": "lock"}}
	orders := metricSeries{"caddy_acme_issuance_duration_seconds", map[string]string{"kind": "order", "outcome": "success"}}
	lockCount, lockSum := lock.histogram()
	lockSlow := lock.above(0.1)
	orderCount, orderSum := orders.histogram()
	ordersBefore := pebble.Orders()
	opsBefore := storageOps(backend)

	r = issuanceRun{who: backend + " app", n: len(names), lat: make([]time.Duration, len(names))}
	var served, failedFirst, notServed atomic.Int32
	var gaveUp atomic.Bool
	done := make(chan struct{})
	go watchdog(&served, len(names), stuck, func() { gaveUp.Store(true); cancel() }, done)
	cpu := startCPUMeter(b, pebble)
	start := time.Now()
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			for try := 0; ; try++ {
				_, err := handshake(ctx, srv.httpsAddr(), name, roots)
				if err == nil {
					r.lat[i] = time.Since(start)
					served.Add(1)
					return
				}
				if try == 0 && failedFirst.Add(1) <= 3 && ctx.Err() == nil {
					b.Logf("first handshake for %s, after %s: %v", name, time.Since(start).Round(time.Millisecond), err)
				}
				if time.Since(start) > giveUp || ctx.Err() != nil {
					r.lat[i] = time.Since(start)
					notServed.Add(1)
					return
				}
				time.Sleep(time.Second)
			}
		})
	}
	wg.Wait()
	close(done)
	r.wall = time.Since(start)
	r.selfCPU, r.pebbleCPU = cpu()
	if gaveUp.Load() {
		return r, true
	}
	r.failedFirst, r.notServed = int(failedFirst.Load()), int(notServed.Load())

	lc, ls := lock.histogram()
	oc, osum := orders.histogram()
	r.locks = &lockStats{
		count:        lc - lockCount,
		waited:       lock.above(0.1) - lockSlow,
		wait:         time.Duration((ls - lockSum) * float64(time.Second)),
		orders:       oc - orderCount,
		orderTime:    time.Duration((osum - orderSum) * float64(time.Second)),
		pebbleOrders: pebble.Orders() - ordersBefore,
	}
	for op, n := range storageOps(backend) {
		if d := n - opsBefore[op]; d > 0 {
			if r.storageOps == nil {
				r.storageOps = make(map[string]uint64)
			}
			r.storageOps[op] = d
		}
	}
	return r, false
}

// issuanceRun is the outcome of ordering n names at once.
type issuanceRun struct {
	who         string
	n           int
	wall        time.Duration     // until the last name was served (or given up)
	lat         []time.Duration   // each name's time to certificate
	failedFirst int               // first handshakes that failed
	notServed   int               // names never served
	deadlocks   int               // attempts abandoned before this one
	locks       *lockStats        // nil for the bare client
	storageOps  map[string]uint64 // the app's storage operations during the run, by operation
	selfCPU     time.Duration     // CPU time of this process during the run
	pebbleCPU   time.Duration     // CPU time of Pebble and its DNS server
}

// lockStats are the app's lock and order figures of one issuance run.
type lockStats struct {
	count        uint64
	waited       uint64 // took over 100 ms
	wait         time.Duration
	orders       uint64 // succeeded
	orderTime    time.Duration
	pebbleOrders int
}

func reportIssuance(b *testing.B, r issuanceRun) {
	b.ReportMetric(r.wall.Seconds(), "total-s")
	b.ReportMetric(r.wall.Seconds()/float64(r.n), "s/name")
	b.ReportMetric(float64(r.n)/r.wall.Seconds(), "names/s")
	b.ReportMetric(float64(r.notServed), "not-served")
	b.ReportMetric(pct(r.lat, 50).Seconds(), "to-cert-p50-s")
	b.ReportMetric(pct(r.lat, 100).Seconds(), "to-cert-max-s")
	b.ReportMetric(float64(r.deadlocks), "pebble-deadlocks")
	cores := float64(runtime.NumCPU())
	b.ReportMetric(r.selfCPU.Seconds()/float64(r.n)*1000, "client-cpu-ms/name")
	b.ReportMetric(r.pebbleCPU.Seconds()/float64(r.n)*1000, "pebble-cpu-ms/name")
	b.ReportMetric((r.selfCPU+r.pebbleCPU).Seconds()/(cores*r.wall.Seconds()), "cpu-busy")
	line := fmt.Sprintf("%s: %d names at once, done after %s = %.3f s/name (%.1f names/s); not served %d; time to certificate p50 %s, max %s",
		r.who, r.n, r.wall.Round(time.Millisecond), r.wall.Seconds()/float64(r.n), float64(r.n)/r.wall.Seconds(), r.notServed,
		pct(r.lat, 50).Round(time.Millisecond), pct(r.lat, 100).Round(time.Millisecond))
	line += fmt.Sprintf("; CPU time: this process %s (%.1f ms a name), Pebble %s (%.1f ms a name): %.0f%% of %.0f cores over the run",
		r.selfCPU.Round(time.Millisecond), r.selfCPU.Seconds()/float64(r.n)*1000, r.pebbleCPU.Round(time.Millisecond), r.pebbleCPU.Seconds()/float64(r.n)*1000,
		100*(r.selfCPU+r.pebbleCPU).Seconds()/(cores*r.wall.Seconds()), cores)
	if l := r.locks; l != nil {
		b.ReportMetric(float64(r.failedFirst), "failed-first")
		b.ReportMetric(l.wait.Seconds(), "lock-wait-s")
		b.ReportMetric(float64(l.count), "locks")
		b.ReportMetric(float64(l.waited), "locks-over-100ms")
		b.ReportMetric(float64(l.pebbleOrders), "pebble-orders")
		line += fmt.Sprintf("; first handshakes failed %d; Pebble orders %d, succeeded %d; locks %d (%d over 100 ms), summed wait %s = %.2f%% of the summed order time %s",
			r.failedFirst, l.pebbleOrders, l.orders, l.count, l.waited, l.wait.Round(time.Millisecond),
			100*l.wait.Seconds()/max(l.orderTime.Seconds(), 1e-9), l.orderTime.Round(time.Millisecond))
	}
	if len(r.storageOps) > 0 {
		var total uint64
		var parts []string
		for _, op := range slices.Sorted(maps.Keys(r.storageOps)) {
			total += r.storageOps[op]
			parts = append(parts, fmt.Sprintf("%s %.2f", op, float64(r.storageOps[op])/float64(r.n)))
		}
		b.ReportMetric(float64(total)/float64(r.n), "storage-ops/name")
		line += fmt.Sprintf("; storage operations a name %.2f (%s)", float64(total)/float64(r.n), strings.Join(parts, ", "))
	}
	if r.deadlocks > 0 {
		line += fmt.Sprintf("; made again after %d Pebble deadlock(s)", r.deadlocks)
	}
	b.Log(line)
}

// bareOrders orders a certificate for every name at once with a bare acmez
// client (one new account, a new P-256 key per certificate, as certmagic
// does), answering HTTP-01 on port itself. With tlsAddr not "", it does so
// on demand, as the app does: a crypto/tls server on tlsAddr whose
// GetCertificate orders the name it is asked for, and one client handshake
// per name, as appOrders makes (the same TLS work on both sides, no
// storage, no cache). It returns the outcome, or abandoned if Pebble
// deadlocked.
func bareOrders(b *testing.B, pebble *testenv.Pebble, port int, tlsAddr string, names []string, stuck func() bool) (r issuanceRun, abandoned bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var tokens sync.Map
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if v, ok := tokens.Load(r.URL.Path); ok {
				_, _ = io.WriteString(w, v.(string))
				return
			}
			http.NotFound(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()

	client := &acmez.Client{
		Client:           &acme.Client{Directory: pebble.DirectoryURL, HTTPClient: pebbleHTTPClient(pebble)},
		ChallengeSolvers: map[string]acmez.Solver{acme.ChallengeTypeHTTP01: http01Solver{&tokens}},
	}
	accountKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	actx, acancel := context.WithTimeout(ctx, 30*time.Second)
	account, err := client.NewAccount(actx, acme.Account{Contact: []string{"mailto:bare@example.com"}, TermsOfServiceAgreed: true, PrivateKey: accountKey})
	acancel()
	if err != nil {
		if stuck() {
			return r, true
		}
		b.Fatal(err)
	}
	order := func(name string) (*tls.Certificate, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		certs, err := client.ObtainCertificateForSANs(ctx, account, key, []string{name})
		if err != nil {
			return nil, err
		}
		cert := &tls.Certificate{PrivateKey: key}
		for rest := certs[0].ChainPEM; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				break
			}
			cert.Certificate = append(cert.Certificate, block.Bytes)
		}
		return cert, nil
	}
	serve := func(name string) error {
		_, err := order(name)
		return err
	}
	r = issuanceRun{who: "bare acmez", n: len(names), lat: make([]time.Duration, len(names))}
	if tlsAddr != "" {
		r.who = "bare acmez on demand"
		tln, err := tls.Listen("tcp", tlsAddr, &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return order(hello.ServerName)
		}})
		if err != nil {
			b.Fatal(err)
		}
		defer tln.Close()
		go func() {
			for {
				conn, err := tln.Accept()
				if err != nil {
					return
				}
				go func() {
					_ = conn.(*tls.Conn).HandshakeContext(ctx)
					_ = conn.Close()
				}()
			}
		}()
		roots := pebble.RootPool(b)
		serve = func(name string) error {
			_, err := handshake(ctx, tlsAddr, name, roots)
			return err
		}
	}
	var served, failed atomic.Int32
	var gaveUp atomic.Bool
	done := make(chan struct{})
	go watchdog(&served, len(names), stuck, func() { gaveUp.Store(true); cancel() }, done)
	cpu := startCPUMeter(b, pebble)
	start := time.Now()
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			err := serve(name)
			r.lat[i] = time.Since(start)
			if err != nil {
				if failed.Add(1) <= 3 && ctx.Err() == nil {
					b.Logf("bare order for %s: %v", name, err)
				}
				return
			}
			served.Add(1)
		})
	}
	wg.Wait()
	close(done)
	r.wall, r.notServed = time.Since(start), int(failed.Load())
	r.selfCPU, r.pebbleCPU = cpu()
	if gaveUp.Load() {
		return r, true
	}
	return r, false
}

// startCPUMeter starts measuring the CPU time of this process (Caddy, the
// clients, the order-counting proxy of testenv) and of Pebble with its DNS
// server; the function it returns gives each one's use since. With
// -perf.burstprofile, this process's CPU profile of the same span is
// written there (the last run's).
func startCPUMeter(b *testing.B, pebble *testenv.Pebble) func() (self, pebbleCPU time.Duration) {
	self := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	peb := func() time.Duration {
		d, err := pebble.CPUTime()
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	stopProfile := func() {}
	if path := *perfBurstProfile; path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		runtime.SetCPUProfileRate(1000) // a burst lasts seconds: 1 000 samples a second (StartCPUProfile then warns that the rate is set)
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		stopProfile = func() {
			pprof.StopCPUProfile()
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
	}
	self0, peb0 := self(), peb()
	return func() (time.Duration, time.Duration) {
		stopProfile()
		return self() - self0, peb() - peb0
	}
}

// http01Solver answers HTTP-01 challenges from tokens (path → key
// authorization).
type http01Solver struct{ tokens *sync.Map }

func (s http01Solver) Present(_ context.Context, c acme.Challenge) error {
	s.tokens.Store(c.HTTP01ResourcePath(), c.KeyAuthorization)
	return nil
}

func (s http01Solver) CleanUp(_ context.Context, c acme.Challenge) error {
	s.tokens.Delete(c.HTTP01ResourcePath())
	return nil
}

// inParallel runs f for every name, workers at a time, failing b on the
// first error.
func inParallel(b *testing.B, names []string, workers int, f func(name string) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(names) || firstErr.Load() != nil {
					return
				}
				if err := f(names[i]); err != nil {
					err = fmt.Errorf("%s: %w", names[i], err)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		b.Fatal(*err)
	}
}

// cachedCount returns how many of names have a certificate in cache.
func cachedCount(cache *certmagic.Cache, names []string) int {
	n := 0
	for _, name := range names {
		if len(cache.AllMatchingCertificates(name)) > 0 {
			n++
		}
	}
	return n
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// processRSS is the process's resident set size (VmRSS), 0 if unknown.
func processRSS() uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// metricSeries is one series of the process-wide metrics of package
// issuance, read by gathering them.
type metricSeries struct {
	name   string
	labels map[string]string
}

// hist returns the series' histogram (empty if not exported yet).
func (m metricSeries) hist() *dto.Histogram {
	for _, s := range gatherMetrics()[m.name].GetMetric() {
		if hasLabels(s, m.labels) {
			return s.GetHistogram()
		}
	}
	return new(dto.Histogram)
}

// histogram returns the series' observation count and sum.
func (m metricSeries) histogram() (uint64, float64) {
	h := m.hist()
	return h.GetSampleCount(), h.GetSampleSum()
}

// above returns how many observations exceeded le, one of the bucket
// bounds.
func (m metricSeries) above(le float64) uint64 {
	h := m.hist()
	for _, bk := range h.GetBucket() {
		if bk.GetUpperBound() == le {
			return h.GetSampleCount() - bk.GetCumulativeCount()
		}
	}
	return 0
}

// storageTime returns the summed duration (s) of backend's storage
// operations so far, by operation.
func storageTime(backend string) map[string]float64 {
	out := make(map[string]float64)
	for _, s := range gatherMetrics()["caddy_acme_storage_operation_duration_seconds"].GetMetric() {
		if op := labelValue(s, "operation"); hasLabels(s, map[string]string{"backend": backend}) {
			out[op] = s.GetHistogram().GetSampleSum()
		}
	}
	return out
}

func timeSince(backend string, before map[string]float64) map[string]float64 {
	out := make(map[string]float64)
	for op, s := range storageTime(backend) {
		if d := s - before[op]; d > 0 {
			out[op] = d
		}
	}
	return out
}

// pct returns the p-th percentile of d (sorting it).
func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(math.Ceil(p/100*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func mean(d []time.Duration) time.Duration {
	var total time.Duration
	for _, x := range d {
		total += x
	}
	return total / time.Duration(max(len(d), 1))
}

// sum2 returns a[0][i]+a[1][i] for each i.
func sum2(a [2][]time.Duration) []time.Duration {
	out := make([]time.Duration, len(a[0]))
	for i := range out {
		out[i] = a[0][i] + a[1][i]
	}
	return out
}

// perOp formats operation counts divided by n.
func perOp(ops map[string]uint64, n int) string {
	if len(ops) == 0 {
		return "none"
	}
	var parts []string
	for _, op := range issuance.StorageOperations() {
		if c, ok := ops[op]; ok {
			parts = append(parts, fmt.Sprintf("%s %.4g", op, float64(c)/float64(max(n, 1))))
		}
	}
	return strings.Join(parts, ", ")
}

func secondsByOp(t map[string]float64) string {
	var parts []string
	for _, op := range issuance.StorageOperations() {
		if s, ok := t[op]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", op, time.Duration(s*float64(time.Second)).Round(time.Millisecond)))
		}
	}
	return strings.Join(parts, ", ")
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d.Nanoseconds())/1e3) }
func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Nanoseconds())/1e6) }
