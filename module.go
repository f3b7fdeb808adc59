// Package caddyacme is caddy-acme: Kong Gateway's ACME plugin rebuilt as a
// Caddy v2 app. It obtains certificates from Let's Encrypt or any ACMEv2 CA
// on the first TLS handshake for the names it allows, keeps them in a
// certmagic storage, and hands them to Caddy's TLS app through the
// tls.get_certificate.acme manager.
//
// Importing this package (as xcaddy does) registers every caddy-acme module.
package caddyacme

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/allowlist"
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
	// The email address of the ACME account; the CA uses it to contact you
	// about your certificates. REQUIRED. Placeholders such as {env.ACME_EMAIL}
	// are expanded.
	AccountEmail string `json:"account_email"`

	// The ACME directory URL of the CA. A bare origin (no path) gets
	// `/directory` appended, as Kong does; any other URL is used as given.
	// Default: `https://acme-v02.api.letsencrypt.org/directory`.
	APIURI string `json:"api_uri,omitempty"`

	// Whether you accept the CA's terms of service. It must be true for any
	// Let's Encrypt directory (production or staging). Other CAs are
	// registered with the terms agreed, as Kong always did.
	// Default: false.
	TOSAccepted bool `json:"tos_accepted,omitempty"`

	// The key identifier of an External Account Binding, for CAs that
	// require one (ZeroSSL, Google, private CAs). Set together with
	// eab_hmac_key. Placeholders are expanded.
	EABKID string `json:"eab_kid,omitempty"`

	// The base64url-encoded HMAC key of the External Account Binding. A
	// secret: use a placeholder such as {env.EAB_HMAC_KEY} or
	// {file./run/secrets/eab}; it never appears in logs or errors.
	EABHMACKey string `json:"eab_hmac_key,omitempty"`

	// The type of certificate key: `rsa` or `ecc` (ECDSA P-256).
	// Default: `rsa`.
	CertType string `json:"cert_type,omitempty"`

	// The size of RSA certificate keys in bits: 2048, 3072 or 4096. Only
	// used when cert_type is `rsa`. Default: 4096.
	RSAKeySize int `json:"rsa_key_size,omitempty"`

	// Renew a certificate when fewer than this many days remain before it
	// expires, or half its lifetime for a certificate that lives less than
	// twice as long (so short-lived certificates are not renewed
	// continuously). Default: 14.
	RenewThresholdDays *float64 `json:"renew_threshold_days,omitempty"`

	// Ignore the CA's ACME Renewal Information (ARI, RFC 9773). By default
	// a certificate is also renewed when the CA's suggested renewal window
	// opens before renew_threshold_days (as Let's Encrypt's does, about a
	// third of the lifetime before expiry, or at once after a revocation);
	// with disable_ari only the threshold decides, as in Kong. Default:
	// false.
	DisableARI bool `json:"disable_ari,omitempty"`

	// How often every certificate in storage is checked for renewal (one
	// node of a cluster at a time); each wait is jittered by ±10%. The
	// first check runs a minute after start. Default: 24h.
	RenewInterval caddy.Duration `json:"renew_interval,omitempty"`

	// How often each node reads the log of certificates that other nodes
	// sharing the storage renewed or deleted, to reload or drop its copies
	// in memory (one storage read each time). Default: 10s.
	CacheSyncInterval caddy.Duration `json:"cache_sync_interval,omitempty"`

	// The names certificates may be obtained for: exact names,
	// `*.example.com` (any name below example.com, at any depth, but not
	// example.com itself) and `example.*` (example under any top-level
	// domain). Matching is case-insensitive; internationalised names are
	// matched in their punycode form. An empty list allows nothing unless
	// allow_any_domain is true.
	Domains []string `json:"domains,omitempty"`

	// Obtain certificates for any name a client asks for, ignoring
	// domains. Only the IPv4 rule (enable_ipv4_common_name) still applies.
	// Default: false.
	AllowAnyDomain bool `json:"allow_any_domain,omitempty"`

	// After a failed order for a name, place no new order for it during
	// this many minutes. The backoff is kept in storage, so every node that
	// shares the storage honours it. A successful order sets none. 0
	// disables the backoff. Default: 5.
	FailBackoffMinutes *float64 `json:"fail_backoff_minutes,omitempty"`

	// The common name of the root (the issuer of the last certificate in
	// the chain) to prefer when the CA offers alternate chains. Default:
	// the CA's default chain.
	PreferredChain string `json:"preferred_chain,omitempty"`

	// Whether IPv4 addresses may have certificates (as ACME `ip`
	// identifiers). When false, a handshake or request for an IPv4 address
	// is never served or ordered. Default: true.
	EnableIPv4CommonName *bool `json:"enable_ipv4_common_name,omitempty"`

	// Where the account, certificates, challenges, locks and backoffs are
	// kept: any `caddy.storage.*` module, e.g. `acme_redis`. Nodes that share
	// it share certificates and never order the same name at once.
	// Default: Caddy's global storage (the file system unless configured).
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`

	// The PEM-encoded private key of the ACME account, used when the account
	// is first registered. A secret: use {file./path/account.key} or
	// {env.X}. Default: a new key is generated and kept in storage.
	AccountKey string `json:"account_key,omitempty"`

	// PEM files with the root certificates of the CA's ACME server, for a
	// private CA whose server certificate the system does not trust.
	// Default: the system's roots.
	TrustedRoots []string `json:"trusted_roots,omitempty"`

	// The port the CA connects to for the HTTP-01 challenge, when Caddy's
	// HTTP listener is not on 80 (e.g. behind a port mapping). Default: 80.
	HTTPPort int `json:"http_port,omitempty"`

	// How long a TLS handshake for a name without a certificate waits for
	// the certificate to be issued; the order itself is given as long,
	// counted from when it leaves the app's queue (new orders are placed at
	// certmagic's pace, 10 per 10 s per account). A handshake that gives
	// up fails, and the next one is served as soon as the certificate is
	// there; an order that runs out of time sets no backoff. The HTTP
	// server's read_header_timeout (Caddy's default: 1m) also bounds a
	// handshake. Default: 90s.
	IssueTimeout caddy.Duration `json:"issue_timeout,omitempty"`

	// The most certificates kept in memory. When full, random certificates
	// are evicted and loaded from storage again when needed. 0 means the
	// default. Default: 10000.
	CacheCapacity int `json:"cache_capacity,omitempty"`

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

	s, err := a.settings()
	if err != nil {
		return err
	}
	a.matcher = s.matcher

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
		KeySource:      s.keys,
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
	a.issuer = certmagic.NewACMEIssuer(a.magic, certmagic.ACMEIssuer{
		CA:                      s.directory,
		TestCA:                  s.directory, // never fall back to another CA
		Email:                   s.email,
		Agreed:                  true, // see TOSAccepted
		ExternalAccount:         s.eab,
		AccountKeyPEM:           s.accountKey,
		TrustedRoots:            s.roots,
		AltHTTPPort:             a.HTTPPort,
		DisableTLSALPNChallenge: true, // HTTP-01 only, as Kong
		PreferredChains:         s.chains,
		CertObtainTimeout:       a.issueTimeout(),
		Logger:                  a.logger.Named("issuer"),
	})
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

// settings is the result of checking and expanding the configuration.
type settings struct {
	email      string
	directory  string
	eab        *acme.EAB
	accountKey string
	roots      *x509.CertPool
	chains     certmagic.ChainPreference
	keys       certmagic.KeyGenerator
	matcher    *allowlist.Matcher
}

// settings validates every field, expands placeholders and returns what
// Provision needs. Errors name the field and say how to fix it; secrets
// never appear in them.
func (a *App) settings() (settings, error) {
	var s settings
	repl := caddy.NewReplacer()

	email, err := repl.ReplaceOrErr(a.AccountEmail, true, true)
	if err != nil {
		return s, fmt.Errorf("account_email: %w", err)
	}
	switch {
	case email == "":
		return s, errors.New(`account_email: required: set the email address of the ACME account, e.g. "account_email": "ops@example.com"`)
	case !strings.Contains(email, "@") || strings.ContainsAny(email, " \t\r\n<>"):
		return s, fmt.Errorf("account_email: invalid value: %s: expected an email address such as ops@example.com", email)
	}
	s.email = email

	s.directory, err = directoryURL(a.APIURI)
	if err != nil {
		return s, err
	}
	if isLetsEncrypt(s.directory) && !a.TOSAccepted {
		return s, fmt.Errorf("tos_accepted: terms of service must be accepted, see https://letsencrypt.org/repository/ (set tos_accepted to true to use %s)", s.directory)
	}

	kid, err := repl.ReplaceOrErr(a.EABKID, true, true)
	if err != nil {
		return s, fmt.Errorf("eab_kid: %w", err)
	}
	hmacKey, err := repl.ReplaceOrErr(a.EABHMACKey, true, true)
	if err != nil {
		return s, fmt.Errorf("eab_hmac_key: %w", err)
	}
	switch {
	case kid == "" && hmacKey == "":
	case kid == "":
		return s, errors.New("eab_kid: required when eab_hmac_key is set: give both values of the CA's external account binding")
	case hmacKey == "":
		return s, errors.New("eab_hmac_key: required when eab_kid is set: give both values of the CA's external account binding")
	default:
		if _, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(hmacKey, "=")); err != nil {
			return s, errors.New("eab_hmac_key: not base64url: give the HMAC key exactly as the CA shows it (value redacted)")
		}
		s.eab = &acme.EAB{KeyID: kid, MACKey: strings.TrimRight(hmacKey, "=")}
	}

	if a.CertType != "" {
		if err := checkCertType(a.CertType); err != nil {
			return s, err
		}
	}
	if a.RSAKeySize != 0 {
		if err := checkRSAKeySize(a.RSAKeySize); err != nil {
			return s, err
		}
	}
	s.keys = keyGenerator{ecc: a.CertType == "ecc", rsaBits: a.rsaKeySize()}

	if d := a.RenewThresholdDays; d != nil && *d < 0 {
		return s, fmt.Errorf("renew_threshold_days: must not be negative, got %v", *d)
	}
	if m := a.FailBackoffMinutes; m != nil && *m < 0 {
		return s, fmt.Errorf("fail_backoff_minutes: must not be negative (0 disables the backoff), got %v", *m)
	}
	if a.HTTPPort < 0 || a.HTTPPort > 65535 {
		return s, fmt.Errorf("http_port: expected a port between 1 and 65535, got %d", a.HTTPPort)
	}
	if a.IssueTimeout < 0 {
		return s, fmt.Errorf("issue_timeout: must not be negative, got %s", time.Duration(a.IssueTimeout))
	}
	if a.CacheSyncInterval < 0 {
		return s, fmt.Errorf("cache_sync_interval: must not be negative, got %s", time.Duration(a.CacheSyncInterval))
	}
	if a.RenewInterval < 0 {
		return s, fmt.Errorf("renew_interval: must not be negative, got %s", time.Duration(a.RenewInterval))
	}
	if a.CacheCapacity < 0 {
		return s, fmt.Errorf("cache_capacity: must not be negative (0 means the default, %d), got %d", defaultCacheCapacity, a.CacheCapacity)
	}

	s.matcher, err = allowlist.New(a.Domains)
	if err != nil {
		return s, fmt.Errorf("domains: %w", err)
	}

	if a.PreferredChain != "" {
		s.chains = certmagic.ChainPreference{RootCommonName: []string{a.PreferredChain}}
	}

	if a.AccountKey != "" {
		s.accountKey, err = repl.ReplaceOrErr(a.AccountKey, true, true)
		if err != nil {
			return s, fmt.Errorf("account_key: %w", err)
		}
		if _, err := certmagic.PEMDecodePrivateKey([]byte(s.accountKey)); err != nil {
			return s, errors.New("account_key: not a PEM-encoded private key: give the key's PEM text, e.g. {file./etc/caddy/account.key} (value redacted)")
		}
	}

	if len(a.TrustedRoots) > 0 {
		s.roots = x509.NewCertPool()
		for _, file := range a.TrustedRoots {
			pemBytes, err := os.ReadFile(file)
			if err != nil {
				return s, fmt.Errorf("trusted_roots: reading %s: %w", file, err)
			}
			if !s.roots.AppendCertsFromPEM(pemBytes) {
				return s, fmt.Errorf("trusted_roots: %s holds no PEM certificate", file)
			}
		}
	}
	return s, nil
}

func checkCertType(t string) error {
	if t != "rsa" && t != "ecc" {
		return fmt.Errorf(`cert_type: expected "rsa" or "ecc", got %q`, t)
	}
	return nil
}

func checkRSAKeySize(bits int) error {
	if bits != 2048 && bits != 3072 && bits != 4096 {
		return fmt.Errorf("rsa_key_size: expected 2048, 3072 or 4096, got %d", bits)
	}
	return nil
}

// directoryURL checks api_uri and normalises it as Kong does for a bare
// origin. Kong appends /directory to every URL that lacks it, which breaks
// CAs whose directory has another path (Pebble's /dir, ZeroSSL's /v2/DV90);
// caddy-acme does it only when there is no path.
func directoryURL(raw string) (string, error) { return directory.URL(raw) }

// isLetsEncrypt reports whether the directory is Let's Encrypt's production
// or staging endpoint, with or without /directory: its terms of service must
// be accepted explicitly. (Kong's check compares the bare origins only.)
func isLetsEncrypt(directory string) bool {
	u, err := url.Parse(directory)
	if err != nil {
		return false
	}
	host := strings.ToLower(u.Hostname())
	return host == "acme-v02.api.letsencrypt.org" || host == "acme-staging-v02.api.letsencrypt.org"
}

// allow reports whether a certificate may be served or obtained for name
// (already normalised): the IPv4 rule, then allow_any_domain, then the
// allowlist. Its cost does not depend on the number of domains.
func (a *App) allow(name string) error {
	if name == "" {
		return errors.New("no server name")
	}
	if ip := net.ParseIP(name); ip != nil && ip.To4() != nil && !a.ipv4Enabled() {
		return fmt.Errorf("%s: IPv4 addresses are not served (enable_ipv4_common_name is false)", name)
	}
	if a.AllowAnyDomain || a.matcher.Match(name) {
		return nil
	}
	return fmt.Errorf("%s: %w", name, errNotAllowed)
}

func (a *App) rsaKeySize() int {
	if a.RSAKeySize == 0 {
		return 4096
	}
	return a.RSAKeySize
}

func (a *App) failBackoff() time.Duration {
	if a.FailBackoffMinutes == nil {
		return 5 * time.Minute
	}
	return time.Duration(*a.FailBackoffMinutes * float64(time.Minute))
}

func (a *App) ipv4Enabled() bool {
	return a.EnableIPv4CommonName == nil || *a.EnableIPv4CommonName
}

func (a *App) issueTimeout() time.Duration {
	if a.IssueTimeout == 0 {
		return 90 * time.Second
	}
	return time.Duration(a.IssueTimeout)
}

func (a *App) cacheCapacity() int {
	if a.CacheCapacity == 0 {
		return defaultCacheCapacity
	}
	return a.CacheCapacity
}

const (
	defaultAPIURI        = directory.Default
	defaultCacheCapacity = 10000
)

// errNotAllowed is returned (wrapped) for a name the app does not serve.
var errNotAllowed = errors.New("not allowed by domains (add it to domains or set allow_any_domain)")

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
