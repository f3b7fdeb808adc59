// Package caddyacme is caddy-acme: Kong Gateway's ACME plugin rebuilt as a
// Caddy v2 app. It obtains certificates from Let's Encrypt or any ACMEv2 CA
// on the first TLS handshake for the names it allows, keeps them in a
// certmagic storage, and hands them to Caddy's TLS app through the
// tls.get_certificate.acme manager.
//
// Importing this package (as xcaddy does) registers every caddy-acme module.
package caddyacme

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/allowlist"
	"github.com/acmekit/caddy-acme/internal/appconfig"
	"github.com/acmekit/caddy-acme/internal/directory"
	"github.com/acmekit/caddy-acme/renew"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `acme` app: Kong's ACME plugin configuration (same field names,
// types, defaults and validation) turned into one certmagic configuration
// with its own certificate cache, ACME issuer, key source and storage.
//
// Certificates are obtained on the first TLS handshake for a name the app
// allows (see Domains and AllowAnyDomain), one certificate per name,
// validated with the HTTP-01 challenge. Caddy's TLS app reaches them through
// the `tls.get_certificate.acme` certificate manager; the CA reaches the
// challenge answers through Caddy's HTTP server or the `acme_challenge`
// handler.
type App struct {
	appconfig.Config

	set     appconfig.Settings
	ctx     caddy.Context
	logger  *zap.Logger
	storage certmagic.Storage
	matcher *allowlist.Matcher
	magic   *certmagic.Config
	issuer  *certmagic.ACMEIssuer
	cache   *certmagic.Cache
	events  *caddyevents.App // nil when not provisioned by a config load
	issuing *issuanceClock
	jobs    *obtainJobs
	scanner *renew.Scanner
	runner  *renew.Runner
	status  *statusCache

	cacheSync  *cacheSync
	refusals   *caRefusals
	hosts      *hostsSnapshot
	orderQueue *orderQueue // nil: orders are not paced
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "acme",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the configuration and builds the certmagic configuration:
// cache, key source, ACME issuer and storage. It does no network I/O.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.jobs = &obtainJobs{running: make(map[string]*obtainJob)}
	a.status = new(statusCache)
	a.cacheSync = &cacheSync{cached: make(map[string]struct{})}
	a.refusals = &caRefusals{watched: make(map[string]bool)}
	a.hosts = new(hostsSnapshot)

	s, err := a.Settings()
	if err != nil {
		return err
	}
	a.set = s
	a.matcher = s.Matcher

	var storageModule caddy.Module
	if a.StorageRaw != nil {
		val, err := ctx.LoadModule(a, "StorageRaw")
		if err != nil {
			return fmt.Errorf("storage: loading module: %w", err)
		}
		storageModule = val.(caddy.Module)
		a.storage, err = val.(caddy.StorageConverter).CertMagicStorage()
		if err != nil {
			return fmt.Errorf("storage: %w", err)
		}
	} else {
		a.storage = ctx.Storage()
	}
	a.storage = instrumentStorage(a.storage, storageBackend(storageModule, a.storage))
	if err := a.provisionEvents(ctx); err != nil {
		return err
	}

	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) {
			return a.magic, nil
		},
		Capacity: a.cacheCapacity(),
		Logger:   a.logger.Named("cache"),
	})
	a.magic = certmagic.New(a.cache, certmagic.Config{
		Storage:        a.storage,
		KeySource:      s.Keys,
		Logger:         a.logger,
		OnEvent:        a.onEvent,
		ShouldEmitFunc: a.shouldEmit,
		// certmagic's own maintenance renews certificates in memory when
		// their ARI window says so (as the scan does) or, as a last
		// resort, in the last 1% of their life: the renewal scan, on
		// renew_threshold_days, comes first
		RenewalWindowRatio: 0.01,
		DisableARI:         a.DisableARI,
	})
	a.issuer = appconfig.NewIssuer(a.magic, s, a.logger.Named("issuer"))
	a.magic.Issuers = []certmagic.Issuer{a.issuer}
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		if err := registerMetrics(reg, a); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	// here, not in Start: the http app may serve handshakes before this
	// app starts (Caddy starts apps in no set order); Cleanup stops it
	a.orderQueue = newOrderQueue()
	return nil
}

// Start starts the renewal scans, and warns about a configuration that
// serves nothing.
func (a *App) Start() error {
	if !a.AllowAnyDomain && a.matcher.Len() == 0 {
		a.logger.Warn("no certificate will be obtained: domains is empty and allow_any_domain is false")
	}
	a.startRenewal()
	a.startCacheSync()
	return nil
}

// Stop does nothing: orders in progress end with the config's context.
func (a *App) Stop() error { return nil }

// Cleanup stops the certificate cache's maintenance.
func (a *App) Cleanup() error {
	a.orderQueue.stop()
	if a.cache != nil {
		a.cache.Stop()
	}
	return nil
}

func (a *App) allow(name string) error { return a.set.Allow(name) }

func (a *App) failBackoff() time.Duration { return a.set.FailBackoff }

func (a *App) issueTimeout() time.Duration { return a.set.IssueTimeout }

func (a *App) cacheCapacity() int { return a.set.CacheCapacity }

const defaultAPIURI = directory.Default

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
