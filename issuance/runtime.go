// Package issuance is caddy-acme's issuance runtime: what happens at run
// time between a TLS handshake, the storage and the CA, without Caddy.
//
//   - a handshake for a name without a certificate starts one job per name
//     (jobs.go) that loads it from storage or orders it, after the checks
//     that refuse at once (the CA pause and rate limits, the cluster-wide
//     backoff after the CA refused the name: backoff.go; the budget per
//     registered domain: budget.go; the permission module's answer:
//     ask.go), waiting its turn in the node's order queue, bounded by the
//     intake (queue.go) and dropped when every handshake waiting for it
//     gave up (peer.go sees the client hang up);
//   - the CA's answers to an order are read as they pass (caclient.go) and
//     its verdict travels with the order's context (verdict.go): only the
//     name's fault backs off;
//   - the domains added through the admin API are kept in storage and
//     matched on every node (domains.go);
//   - certificates renewed or deleted on one node reach the memory of the
//     others through a change log in storage (cachesync.go);
//   - the renewal scan of package renew reads the stored certificates in
//     batches (renewal.go, loadmany.go) and the admin operations (admin.go)
//     list, order, renew and delete them;
//   - metrics of orders, renewals, storage operations and the state of the
//     certificates (metrics.go, storagemetrics.go).
//
// The app (package caddyacme) builds the certmagic configuration and hands
// it in with the rest of the Runtime's dependencies (Options); its tests
// build a Runtime the same way, without a Caddy config.
package issuance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/renew"
)

// Issuer is what the runtime needs of the app's ACME issuer
// (*certmagic.ACMEIssuer): the key its certificates are stored under, and
// the CA's renewal information (ARI) for a certificate.
type Issuer interface {
	IssuerKey() string
	GetRenewalInfo(ctx context.Context, cert certmagic.Certificate) (acme.RenewalInfo, error)
}

// Options are a Runtime's dependencies and settings. Magic, Cache, Issuer
// and Storage are required; a zero setting takes its default.
type Options struct {
	// The certmagic configuration that loads, orders, renews and revokes
	// certificates. Its OnEvent must pass every event to the Runtime's
	// HandleEvent. New turns its DisableStorageCheck on: the runtime checks
	// the storage itself before its orders and renewals, at most once a
	// minute (storagecheck.go).
	Magic *certmagic.Config
	// Magic's certificate cache.
	Cache *certmagic.Cache
	// Magic's ACME issuer: the primary CA's.
	Issuer Issuer
	// Magic's further ACME issuers, the fallback CAs, in the order Magic
	// asks them after Issuer (Magic.Issuers is Issuer, then these). Each
	// CA has its own pause, rate limits and backoffs, and keeps its
	// certificates under its own issuer key. Default: none.
	Fallback []Issuer
	// Magic's storage (default: Magic.Storage).
	Storage certmagic.Storage
	// Where the runtime logs. Default: no logs.
	Logger *zap.Logger

	// Allow decides whether a certificate may be served or obtained for a
	// name (lowercased, without a trailing dot); its error says why not.
	// Default: every name.
	Allow func(name string) error

	// How long a handshake waits for a certificate, and an order may take
	// once out of the queue. Default: 90s.
	IssueTimeout time.Duration
	// How long no order is placed for a name after the CA refused it; 0:
	// no backoff.
	FailBackoff time.Duration
	// Renew when less than this remains (capped at half the lifetime, see
	// renew.Policy); 0 renews at expiry or in the CA's ARI window (Kong's
	// renew_threshold_days 0). The app passes its setting (default 14
	// days); there is no default here.
	RenewThreshold time.Duration
	// How often the renewal scan runs. Default: renew.Runner's, 24h.
	RenewInterval time.Duration
	// How long after Start the first renewal scan runs. Default: 1m.
	FirstScanDelay time.Duration
	// How often the change log is read. Default: 10s.
	CacheSyncInterval time.Duration
	// How many changes the change log keeps; a node that missed more
	// refreshes everything it holds. Default: 1000.
	MaxCacheChanges int
	// Ignore the CA's ARI windows (renewal scan, listings).
	DisableARI bool
	// The port of the HTTP-01 sanity check. Default: 80.
	HTTPPort int
	// This node's name in the scan status. Default: the host name.
	Node string
	// The pace of this node's new orders: at most OrderEvents per
	// OrderWindow. Default: certmagic's own limit for one account
	// (certmagic.RateLimitEvents per certmagic.RateLimitEventsWindow, 10
	// per 10 s), which certmagic applies inside the order anyway.
	OrderEvents int
	OrderWindow time.Duration

	// Called for a handshake refused because its name is in backoff (the
	// app emits an event); may be nil.
	OnBackoffDenied func(name string, err error)

	// Orderable reports whether the CA may be asked for name at all (the
	// app's public-CA rule), checked before every order, not on every
	// handshake; its error refuses the order. Default: every name.
	Orderable func(name string) error

	// Ask is consulted before ordering a name that Allow refused only
	// because it is not listed (its error wraps ErrNotListed) and that has
	// no certificate in storage: nil allows it (Caddy's tls.permission
	// modules). Its answers are cached briefly. Default: nil, such names
	// are refused.
	Ask func(ctx context.Context, name string) error

	// PrepareOrder runs before every order (e.g. registering the
	// configured account key with the CA); its error fails the order
	// without a backoff. May be nil.
	PrepareOrder func(ctx context.Context) error

	// The most new certificates per registered domain (public suffix
	// list) in BudgetWindow, cluster-wide; renewals do not count. 0: no
	// limit. The app passes its setting (default 50 per 7 days, Let's
	// Encrypt's limit).
	Budget       int
	BudgetWindow time.Duration
	// Called for a handshake or order refused because its registered
	// domain is over budget (the app emits an event); may be nil.
	OnBudgetDenied func(name string, err error)

	// The most names waiting for an order on this node (queued, not yet at
	// the CA); past it a handshake for a new name fails at once. Default:
	// 200.
	MaxPending int

	// Wildcard turns wildcard certificates on: it reports whether `*.parent`
	// is an entry of the app's domains (the domain list's `*.x` entries
	// count too). A name one label below such a parent is then served by
	// one certificate for `*.parent`, and `*.parent` itself may be ordered
	// (POST /acme) and deleted. nil: one certificate per name.
	Wildcard func(parent string) bool
}

// Runtime runs the issuance of one app configuration: make it with New,
// start its background work with Start, and stop it with Stop (its
// background work also ends with the context given to New).
type Runtime struct {
	ctx     context.Context // the app's life
	opts    Options
	logger  *zap.Logger
	magic   *certmagic.Config
	cache   *certmagic.Cache
	issuer  Issuer
	storage certmagic.Storage

	jobs     jobs
	queue    *orderQueue // nil: orders are not paced
	intake   *intake
	cas      []*caState // the primary CA, then the fallback CAs
	budget   *budget    // nil: no budget
	asks     *askCache
	check    *storageCheck
	ariSlots chan struct{} // ARI requests of the renewal scan in flight
	clock    *issuanceClock
	changes  *changeLog
	domains  *domainList
	hosts    hostsSnapshot
	status   statusCache
	scanner  *renew.Scanner
	runner   *renew.Runner
	renewLog *zap.Logger
}

// New returns the runtime for opts, living as long as ctx. It starts
// nothing but the order queue's pacing (handshakes may come before
// Start).
func New(ctx context.Context, opts Options) *Runtime {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Allow == nil {
		opts.Allow = func(string) error { return nil }
	}
	if opts.IssueTimeout <= 0 {
		opts.IssueTimeout = 90 * time.Second
	}
	if opts.FirstScanDelay <= 0 {
		opts.FirstScanDelay = time.Minute
	}
	if opts.CacheSyncInterval <= 0 {
		opts.CacheSyncInterval = 10 * time.Second
	}
	if opts.MaxCacheChanges <= 0 {
		opts.MaxCacheChanges = 1000
	}
	if opts.HTTPPort == 0 {
		opts.HTTPPort = 80
	}
	if opts.Node == "" {
		opts.Node, _ = os.Hostname()
	}
	if opts.Storage == nil {
		opts.Storage = opts.Magic.Storage
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 200
	}
	if opts.BudgetWindow <= 0 {
		opts.BudgetWindow = 7 * 24 * time.Hour
	}
	for _, issuer := range append([]Issuer{opts.Issuer}, opts.Fallback...) {
		iss, ok := issuer.(*certmagic.ACMEIssuer)
		if !ok {
			continue
		}
		// the CA's answers are read as they pass (caclient.go); an issuer
		// whose client cannot be reached is still used, as before
		if err := ObserveCA(iss, opts.IssueTimeout/2); err != nil {
			opts.Logger.Error("the CA's answers to orders cannot be read: orders that stay pending run to issue_timeout",
				zap.String("ca", iss.IssuerKey()), zap.Error(err))
		}
	}
	// the runtime checks the storage before its orders and renewals, once
	// a minute at most, instead of certmagic before each (storagecheck.go)
	opts.Magic.DisableStorageCheck = true
	if opts.OrderEvents == 0 && opts.OrderWindow == 0 {
		opts.OrderEvents, opts.OrderWindow = certmagic.RateLimitEvents, certmagic.RateLimitEventsWindow
	}
	r := &Runtime{
		ctx:      ctx,
		opts:     opts,
		logger:   opts.Logger,
		magic:    opts.Magic,
		cache:    opts.Cache,
		issuer:   opts.Issuer,
		storage:  opts.Storage,
		jobs:     jobs{running: make(map[string]*job)},
		queue:    newOrderQueue(opts.OrderEvents, opts.OrderWindow),
		intake:   newIntake(opts.MaxPending, opts.Budget),
		cas:      newCAStates(opts),
		budget:   newBudget(opts.Storage, opts.Issuer.IssuerKey(), opts.Budget, opts.BudgetWindow, opts.Logger),
		asks:     newAskCache(),
		check:    newStorageCheck(),
		ariSlots: make(chan struct{}, ariFetchParallelism),
		clock:    newIssuanceClock(),
		renewLog: opts.Logger.Named("renew"),
	}
	if r.budget != nil {
		// an order's reservation must outlive the order
		r.budget.ttl = max(r.budget.ttl, 2*opts.IssueTimeout)
	}
	r.changes = newChangeLog(r)
	r.domains = new(domainList)
	r.scanner = &renew.Scanner{
		Store:  renewStore{r},
		Policy: r.policy(),
		Clock:  renew.SystemClock{},
		Node:   opts.Node,
	}
	if !batchReads(opts.Storage) {
		// a batch is LoadParallelism reads in flight already: a second
		// one at once slowed Vault's scan (BENCHMARKS.md)
		r.scanner.BatchesInFlight = 1
	}
	r.runner = r.newRunner()
	return r
}

// Start starts the background work: the periodic renewal scans, the
// cache sync and the publishing of certmagic's own renewals to the other
// nodes. It all ends with the context given to New. It first reads the
// domains added at run time (see AddDomains) from storage.
func (r *Runtime) Start() {
	r.refreshDomains(r.ctx)
	r.startRenewal()
	r.changes.start()
}

// Stop ends the order queue's pacing. The rest ends with New's context.
func (r *Runtime) Stop() {
	r.queue.stop()
}

// Certificate returns the certificate for the ClientHello's name, from
// memory, else from storage, else by ordering it from the CA. A name Allow
// refuses gets that error (unless it is only not listed, and added
// through AddDomains or allowed by Ask). The handshake waits up to
// IssueTimeout, or until its client hangs up.
func (r *Runtime) Certificate(ctx context.Context, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := ServerName(hello)
	ask, err := r.allow(name)
	if err != nil {
		return nil, err
	}
	if cert, ok := r.cached(name); ok {
		return &cert.Certificate, nil
	}

	subject := r.subject(name) // *.x for a.x with wildcard certificates
	if subject != name {
		// a certificate of the name's own (ordered before wildcard
		// certificates were turned on, or migrated from Kong) is served
		// rather than ordering the wildcard
		if cert, ok := r.loadOwn(ctx, name); ok {
			return &cert.Certificate, nil
		}
	}
	j := r.startJob(subject, ask)
	defer r.jobs.leave(subject, j)
	timer := time.NewTimer(r.opts.IssueTimeout)
	defer timer.Stop()
	peer := newPeerWatch(hello.Conn)
	for {
		select {
		case <-j.done:
			if j.err != nil {
				if _, ok := errors.AsType[BackoffError](j.err); ok {
					r.backoffDenied(subject, j.err)
				}
				return nil, j.err
			}
			return &j.cert.Certificate, nil
		case <-timer.C:
			return nil, r.queue.notReady(subject, r.opts.IssueTimeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-peer.tick():
			if peer.gone() {
				return nil, fmt.Errorf("certificate for %s: the client closed the connection while it was being obtained", name)
			}
		}
	}
}

// loadOwn loads name's own certificate from storage into memory, if there
// is one.
func (r *Runtime) loadOwn(ctx context.Context, name string) (certmagic.Certificate, bool) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.IssueTimeout)
	defer cancel()
	cert, err := r.cacheManaged(ctx, name)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			r.logger.Warn("loading a certificate from storage", zap.String("identifier", name), zap.Error(err))
		}
		return cert, false
	}
	return cert, true
}

// Allowed returns nil if a certificate may be served or ordered for name
// on this node: Allow allows it, or the domains added through AddDomains,
// or it is only not listed and Options.Ask decides before an order (so an
// HTTP-01 challenge for it, which exists only if it was ordered, is
// answered).
func (r *Runtime) Allowed(name string) error {
	_, err := r.allow(name)
	return err
}

// allow returns Allow's verdict on name, with the names added through
// AddDomains: nil, or ask true when only Options.Ask may allow it. A
// wildcard `*.x` is allowed only as the subject of a wildcard certificate
// (Options.Wildcard), never through Options.Ask.
func (r *Runtime) allow(name string) (ask bool, err error) {
	if strings.Contains(name, "*") {
		if parent, ok := strings.CutPrefix(name, "*."); ok && r.wildcardEntry(parent) {
			return false, nil
		}
		return false, fmt.Errorf("%s: a wildcard certificate is obtained only for a *.x entry of domains, with wildcard_certificates and challenges.dns", name)
	}
	err = r.opts.Allow(name)
	if err == nil || !errors.Is(err, ErrNotListed) {
		return false, err
	}
	if r.domainListed(name) {
		return false, nil
	}
	if r.opts.Ask != nil {
		return true, nil
	}
	return false, err
}

// Running reports whether a load or order of name's certificate is in
// progress on this node (handshakes and POST /acme for it wait for it).
func (r *Runtime) Running(name string) bool {
	r.jobs.mu.Lock()
	defer r.jobs.mu.Unlock()
	_, ok := r.jobs.running[name]
	return ok
}

// HandleEvent takes an event of the certmagic configuration (its OnEvent,
// before the app emits it to its subscribers): it times orders and
// renewals, records the CA's verdict on an order the runtime runs, notes
// the certificates put in memory, and makes the other nodes reload a
// certificate certmagic renewed on its own. It touches no storage, so it
// never waits inside certmagic (which holds the issue lock meanwhile).
func (r *Runtime) HandleEvent(ctx context.Context, name string, data map[string]any) {
	identifier, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	key := issuanceKey{identifier: identifier, renewal: renewal}
	switch name {
	case "cert_obtaining":
		r.clock.start(key, time.Now())
	case "cert_obtained":
		r.clock.stop(key, time.Now(), true)
		if renewal && identifier != "" && !noteRenewed(ctx, identifier) {
			// certmagic's own maintenance renewed it: published by the
			// change log's goroutine, not here
			r.changes.publishLater(identifier)
		}
	case "cert_failed":
		r.clock.stop(key, time.Now(), false)
	case "cached_managed_cert":
		sans, _ := data["sans"].([]string)
		for _, name := range sans {
			r.changes.noteCached(name)
		}
	}
}

// IssuanceAborted tells the runtime that a subscriber aborted the order or
// renewal whose cert_obtaining event carried data: it is not timed.
func (r *Runtime) IssuanceAborted(data map[string]any) {
	identifier, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	r.clock.forget(issuanceKey{identifier: identifier, renewal: renewal})
}

// backoffDenied counts a handshake for name refused by the backoff.
func (r *Runtime) backoffDenied(name string, err error) {
	metrics.backoffDenials.Inc()
	if r.opts.OnBackoffDenied != nil {
		r.opts.OnBackoffDenied(name, err)
	}
}

// goRecover runs fn, a long-lived loop of the runtime, in a goroutine; a
// panic is logged as msg with its stack, and ends only that loop.
func goRecover(logger *zap.Logger, msg string, fn func()) {
	go func() {
		defer func() {
			if p := recover(); p != nil {
				logger.Error(msg, zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
			}
		}()
		fn()
	}()
}

// policy is when certificates are renewed.
func (r *Runtime) policy() renew.Policy {
	return renew.Policy{Threshold: r.opts.RenewThreshold}
}
