// Package caddyacme is caddy-acme: Kong Gateway's ACME plugin rebuilt as a
// Caddy v2 app. It obtains certificates from Let's Encrypt or any ACMEv2 CA
// on the first TLS handshake for the names it allows, keeps them in a
// certmagic storage, and hands them to Caddy's TLS app through the
// tls.get_certificate.acme manager.
//
// Importing this package (as xcaddy does) registers every caddy-acme module.
package caddyacme

import (
	"context"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/appconfig"
	"github.com/acmekit/caddy-acme/issuance"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `acme` app: Kong's ACME plugin configuration (same field names,
// types, defaults and validation, see appconfig.Config) turned into one
// certmagic configuration with its own certificate cache, ACME issuer, key
// source and storage, run by an issuance.Runtime.
//
// Certificates are obtained on the first TLS handshake for a name the app
// allows (see Domains and AllowAnyDomain), one certificate per name (or
// one `*.x` certificate for a `*.x` entry, with a DNS provider), validated
// with the HTTP-01 challenge unless Challenges says otherwise, from the
// CA of APIURI, else the Fallback CAs in turn. Caddy's TLS app reaches them
// through the `tls.get_certificate.acme` certificate manager; the CA
// reaches the challenge answers through Caddy's HTTP server or the
// `acme_challenge` handler (HTTP-01), Caddy's TLS server or the
// `acme_tls_alpn` listener wrapper (TLS-ALPN-01).
type App struct {
	appconfig.Config

	set     appconfig.Settings
	ctx     caddy.Context
	logger  *zap.Logger
	storage certmagic.Storage // instrumented
	magic   *certmagic.Config
	issuer  *certmagic.ACMEIssuer
	cache   *certmagic.Cache
	events  *caddyevents.App // nil when not provisioned by a config load
	rt      *issuance.Runtime
	perm    caddytls.OnDemandPermission // nil: no permission module
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "acme",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the configuration and builds the certmagic configuration
// (cache, key source, ACME issuer, storage) and the runtime around it. It
// does no network I/O.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	s, err := a.Settings()
	if err != nil {
		return err
	}
	if err := a.LoadDNSProvider(ctx, &s, a.logger.Named("dns")); err != nil {
		return err
	}
	a.set = s

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
	a.storage = issuance.InstrumentStorage(a.storage, storageBackend(storageModule, a.storage))
	if a.PermissionRaw != nil {
		val, err := ctx.LoadModule(a, "PermissionRaw")
		if err != nil {
			return fmt.Errorf("permission: loading module: %w", err)
		}
		a.perm = val.(caddytls.OnDemandPermission)
	}
	if err := a.provisionEvents(ctx); err != nil {
		return err
	}

	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) {
			return a.magic, nil
		},
		Capacity: s.CacheCapacity,
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
		DisableARI:         s.DisableARI,
	})
	a.issuer = appconfig.NewIssuer(a.magic, s, a.logger.Named("issuer"))
	a.magic.Issuers = []certmagic.Issuer{a.issuer}
	var fallback []issuance.Issuer
	for _, iss := range appconfig.NewFallbackIssuers(a.magic, s, a.logger.Named("issuer")) {
		a.magic.Issuers = append(a.magic.Issuers, iss)
		fallback = append(fallback, iss)
	}
	// made here, not in Start: the http app may serve handshakes before
	// this app starts (Caddy starts apps in no set order)
	a.rt = issuance.New(ctx, issuance.Options{
		Magic:             a.magic,
		Cache:             a.cache,
		Issuer:            a.issuer,
		Fallback:          fallback,
		Storage:           a.storage,
		Logger:            a.logger,
		Allow:             s.Allow,
		Orderable:         s.Orderable,
		IssueTimeout:      s.IssueTimeout,
		FailBackoff:       s.FailBackoff,
		RenewThreshold:    s.RenewThreshold,
		RenewInterval:     s.RenewInterval,
		FirstScanDelay:    s.RenewFirstDelay,
		CacheSyncInterval: s.CacheSyncInterval,
		DisableARI:        s.DisableARI,
		HTTPPort:          s.HTTPPort,
		OnBackoffDenied:   a.backoffDenied,
		PrepareOrder:      newAccountSetup(a.issuer, &a.set).prepareOrder,
		Ask:               a.ask(),
		Budget:            s.Budget,
		BudgetWindow:      s.BudgetWindow,
		OnBudgetDenied:    a.budgetDenied,
		MaxPending:        s.MaxPending,
		Wildcard:          s.Wildcard(),
	})
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		if err := issuance.RegisterMetrics(reg, a.rt); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	return nil
}

// Start starts the renewal scans and the cache sync, and warns about a
// configuration that serves nothing.
func (a *App) Start() error {
	if !a.AllowAnyDomain && a.set.Matcher.Len() == 0 && a.perm == nil {
		a.logger.Warn("no certificate will be obtained but for the domains added through the admin API (/acme/domains): domains is empty, allow_any_domain is false and there is no permission module")
	}
	a.rt.Start()
	return nil
}

// ask returns the runtime's Ask: the permission module, if any.
func (a *App) ask() func(context.Context, string) error {
	if a.perm == nil {
		return nil
	}
	return func(ctx context.Context, name string) error {
		return a.perm.CertificateAllowed(ctx, name)
	}
}

// Stop does nothing: orders in progress end with the config's context.
func (a *App) Stop() error { return nil }

// Cleanup stops the order queue and the certificate cache's maintenance.
func (a *App) Cleanup() error {
	if a.rt != nil {
		a.rt.Stop()
	}
	if a.cache != nil {
		a.cache.Stop()
	}
	return nil
}

// storageBackend names a storage for the backend label: the module name
// of a storage configured in the app (e.g. acme_redis), else the module
// name of Caddy's global storage when it is a module itself, file_system
// for certmagic's file storage (Caddy's default), or the Go type.
func storageBackend(module caddy.Module, s certmagic.Storage) string {
	if module != nil {
		return module.CaddyModule().ID.Name()
	}
	switch s := s.(type) {
	case caddy.Module:
		return s.CaddyModule().ID.Name()
	case *certmagic.FileStorage:
		return "file_system"
	default:
		return strings.TrimPrefix(fmt.Sprintf("%T", s), "*")
	}
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
