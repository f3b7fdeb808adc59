// Package appconfig is the acme app's configuration: the fields of the
// `acme` app's JSON (Kong's plugin fields and caddy-acme's own), their
// checks, placeholders and defaults, and the certmagic ACME issuer they
// describe.
//
// The app (package caddyacme) embeds Config; the kong config adapter builds
// it and the data migration reads it and makes its issuer with NewIssuer, so
// that an adapted config, a migration and the app never disagree on a field,
// a default, an error message or a storage key.
package appconfig

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/allowlist"
	"github.com/acmekit/caddy-acme/internal/directory"
	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/issuance"
)

// Config is the `acme` app's JSON: Kong's ACME plugin configuration (same
// field names, types, defaults and validation) and caddy-acme's own
// fields.
type Config struct {
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
	// continuously). From 0 to 3650 (10 years; Kong sets no upper limit,
	// but a longer threshold than any certificate's lifetime only renews
	// at every scan, and days beyond about 106,751 overflow a duration).
	// Default: 14.
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
	// first check runs renew_first_delay after start. From 1m to 8760h
	// (365 days): a scan reads every certificate in storage. Default: 24h.
	RenewInterval caddy.Duration `json:"renew_interval,omitempty"`

	// How long after start the first renewal check runs (later ones
	// follow renew_interval). Kong waited a whole day; a node that is
	// restarted often may wait longer. At most 8760h (365 days); 0 or
	// left out is the default. Default: 1m.
	RenewFirstDelay caddy.Duration `json:"renew_first_delay,omitempty"`

	// How often each node reads the log of certificates that other nodes
	// sharing the storage renewed or deleted, to reload or drop its copies
	// in memory (one storage read each time). From 500ms to 24h: a shorter
	// interval only spends CPU and storage reads. Default: 10s.
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
	// disables the backoff. At most 525600 (a year; Kong sets no upper
	// limit). Default: 5.
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
	// handshake. From 10s (less does not leave an order the time to be
	// validated) to 24h. Default: 90s.
	IssueTimeout caddy.Duration `json:"issue_timeout,omitempty"`

	// The most certificates kept in memory. When full, random certificates
	// are evicted and loaded from storage again when needed. 0 means the
	// default. Default: 10000.
	CacheCapacity int `json:"cache_capacity,omitempty"`

	// Who else may get a certificate, decided at run time: any of Caddy's
	// `tls.permission.*` modules, e.g. `{"module": "http", "endpoint":
	// "http://127.0.0.1:9000/allowed"}` (Caddy's `ask`: a 2xx answer to
	// `GET <endpoint>?domain=<name>` allows the name). It is asked about a
	// name that domains (and the domains added through the admin API) do
	// not allow and that has no certificate in storage, before it is
	// ordered; its answers are kept for a minute (a refusal for 10 s). An
	// endpoint that cannot be reached refuses. To decide every name with
	// it, leave domains empty. Default: none.
	PermissionRaw json.RawMessage `json:"permission,omitempty" caddy:"namespace=tls.permission inline_key=module"`

	// The most names waiting for an order on one node (queued behind the
	// node's pace of 10 orders per 10 s, not yet at the CA), and at most
	// domain_budget of them under one registered domain. Past it a TLS
	// handshake for a new name fails at once; a queued name whose every
	// handshake gave up is dropped. Default: 200.
	MaxPendingOrders int `json:"max_pending_orders,omitempty"`

	// The most new certificates per registered domain (per the public
	// suffix list: shop.example.co.uk counts for example.co.uk) in
	// domain_budget_window, counted for the whole cluster in the storage.
	// Renewals do not count. Over it, a name is refused without an order.
	// The default mirrors Let's Encrypt's limit of 50 new certificates per
	// registered domain per 7 days, which a scan of random names under an
	// allowed `*.example.com` would otherwise use up, locking every name
	// under it out for a week. 0 means no limit. Default: 50.
	DomainBudget *int `json:"domain_budget,omitempty"`

	// The window of domain_budget. Default: 168h (7 days).
	DomainBudgetWindow caddy.Duration `json:"domain_budget_window,omitempty"`

	// How the CA validates control of a name: Caddy's own ACME issuer
	// `challenges` object, same shape and meaning — `http`
	// (`{"disabled": true}`; `alternate_port` is http_port), `tls-alpn`
	// (TLS-ALPN-01 on 443, or `alternate_port`), `dns` (`provider`: any
	// `dns.providers.*` module compiled into Caddy, `ttl`,
	// `propagation_delay`, `propagation_timeout` (-1: do not wait),
	// `resolvers`, `override_domain`), `bind_host`, `distributed`. With
	// `dns`, every order is validated with DNS-01 only (as Caddy does).
	// Without `dns`, HTTP-01 is used unless `http` is disabled, and
	// TLS-ALPN-01 when `tls-alpn` is given or HTTP-01 is disabled (unless
	// `tls-alpn` is disabled too). For TLS-ALPN-01 on a node that did not
	// place the order, see the acme_tls_alpn listener wrapper. Default:
	// HTTP-01 only, as Kong.
	Challenges *caddytls.ChallengesConfig `json:"challenges,omitempty"`

	// Further CAs, in order, each asked for a certificate when the CAs
	// before it refused the name or could not be reached (the 2025–26
	// Let's Encrypt incidents): {api_uri (required), tos_accepted, eab_kid,
	// eab_hmac_key (secret), trusted_roots, preferred_chain, profile}, each
	// checked as the top-level field of the same name. A renewal asks the
	// CAs in the same order (the primary first, also for a certificate a
	// fallback issued). Backoffs and pauses are per CA: a CA that is down
	// or refused a name is skipped while they last, so it never holds up
	// the next. account_key is the primary CA's account; a fallback CA
	// gets an account whose key certmagic generates and keeps in storage.
	// Each CA keeps its certificates under its own issuer key. Default:
	// none.
	Fallback []FallbackCA `json:"fallback,omitempty"`

	// With a DNS provider (challenges.dns), a `*.x` entry of domains is
	// served by one wildcard certificate for `*.x`, ordered once on the
	// first handshake for any name one label below x; a deeper name gets
	// its own certificate. Needs challenges.dns (a CA validates a wildcard
	// with DNS-01 only). Default: true when challenges.dns is set.
	WildcardCertificates *bool `json:"wildcard_certificates,omitempty"`

	// The ACME profile to order certificates with, from those the CA
	// offers in its directory (e.g. Let's Encrypt's `classic`,
	// `tlsserver`, `shortlived`: 6-day certificates, renewed at half their
	// life or in the CA's ARI window). Renewals use it too. Default: the
	// CA's default profile.
	Profile string `json:"profile,omitempty"`

	// Whether IPv6 addresses may have certificates (as ACME `ip`
	// identifiers), under the same rules as IPv4 addresses
	// (enable_ipv4_common_name): an exact entry of domains or
	// allow_any_domain, and a public CA issues only for public addresses
	// (Let's Encrypt only under the `shortlived` profile). Default: false.
	EnableIPv6 bool `json:"enable_ipv6,omitempty"`
}

// Settings is a Config checked, with its placeholders expanded, its files
// read and its defaults applied: what the app runs with.
type Settings struct {
	Email      string
	Directory  string
	EAB        *acme.EAB // nil: no external account binding
	AccountKey string    // PEM; "": a new key is generated
	Roots      *x509.CertPool
	Chains     certmagic.ChainPreference
	Keys       certmagic.KeyGenerator
	Matcher    *allowlist.Matcher
	AllowAny   bool
	IPv4       bool
	DisableARI bool
	HTTPPort   int // 0: 80

	IssueTimeout      time.Duration
	FailBackoff       time.Duration // 0: no backoff
	RenewThreshold    time.Duration
	RenewInterval     time.Duration // 0: the renewal scan's default (24h)
	RenewFirstDelay   time.Duration
	CacheSyncInterval time.Duration
	CacheCapacity     int
	MaxPending        int
	Budget            int // 0: no budget
	BudgetWindow      time.Duration

	// The challenges (see Config.Challenges): HTTP-01 and TLS-ALPN-01 on
	// TLSALPNPort (0: 443), unless DNS is set (DNS-01 only).
	HTTPChallenge    bool
	TLSALPNChallenge bool
	TLSALPNPort      int
	BindHost         string
	NoDistributed    bool // challenges.distributed false
	// The DNS-01 settings; nil: no DNS-01. Its provider is a module the
	// app loads (it needs the Caddy context) into DNSSolver.
	DNS       *caddytls.DNSChallengeConfig
	DNSSolver *certmagic.DNS01Solver
	Wildcards bool // one *.x certificate for a *.x entry
	Profile   string
	IPv6      bool
	Fallback  []CA // the fallback CAs, in order
}

// CheckFields checks every field that needs neither its placeholders
// expanded nor a file read, so that `caddy adapt` and the kong adapter
// can check a config where it is written. Errors name the field and say
// how to fix it.
func (c *Config) CheckFields() error {
	_, _, err := c.check()
	return err
}

// check is CheckFields, returning the directory URL and the domains
// matcher it made on the way, for Settings.
func (c *Config) check() (dir string, matcher *allowlist.Matcher, err error) {
	if dir, err = directory.URL(c.APIURI); err != nil {
		return "", nil, err
	}
	if c.CertType != "" && c.CertType != "rsa" && c.CertType != "ecc" {
		return "", nil, fmt.Errorf(`cert_type: expected "rsa" or "ecc", got %q`, c.CertType)
	}
	if n := c.RSAKeySize; n != 0 && n != 2048 && n != 3072 && n != 4096 {
		return "", nil, fmt.Errorf("rsa_key_size: expected 2048, 3072 or 4096, got %d", n)
	}
	if d := c.RenewThresholdDays; d != nil {
		if err := checkNumber("renew_threshold_days", *d, "", MaxRenewThresholdDays, "10 years"); err != nil {
			return "", nil, err
		}
	}
	if m := c.FailBackoffMinutes; m != nil {
		if err := checkNumber("fail_backoff_minutes", *m, " (0 disables the backoff)", MaxFailBackoffMinutes, "a year"); err != nil {
			return "", nil, err
		}
	}
	if c.HTTPPort < 0 || c.HTTPPort > 65535 {
		return "", nil, fmt.Errorf("http_port: expected a port between 1 and 65535, got %d", c.HTTPPort)
	}
	for _, d := range []struct {
		name string
		d    caddy.Duration
		r    durationRange
	}{
		{"issue_timeout", c.IssueTimeout, issueTimeoutRange},
		{"cache_sync_interval", c.CacheSyncInterval, cacheSyncIntervalRange},
		{"renew_interval", c.RenewInterval, renewIntervalRange},
		{"renew_first_delay", c.RenewFirstDelay, renewFirstDelayRange},
	} {
		if err := d.r.check(d.name, time.Duration(d.d)); err != nil {
			return "", nil, err
		}
	}
	if c.MaxPendingOrders < 0 {
		return "", nil, fmt.Errorf("max_pending_orders: must not be negative (0 means the default, %d), got %d", DefaultMaxPending, c.MaxPendingOrders)
	}
	if b := c.DomainBudget; b != nil && *b < 0 {
		return "", nil, fmt.Errorf("domain_budget: must not be negative (0 disables the budget), got %d", *b)
	}
	if c.DomainBudgetWindow < 0 {
		return "", nil, fmt.Errorf("domain_budget_window: must not be negative, got %s", time.Duration(c.DomainBudgetWindow))
	}
	if c.CacheCapacity < 0 {
		return "", nil, fmt.Errorf("cache_capacity: must not be negative (0 means the default, %d), got %d", DefaultCacheCapacity, c.CacheCapacity)
	}
	if matcher, err = allowlist.New(c.Domains); err != nil {
		return "", nil, fmt.Errorf("domains: %w", err)
	}
	if err := c.checkChallenges(); err != nil {
		return "", nil, err
	}
	if err := c.checkFallback(dir); err != nil {
		return "", nil, err
	}
	return dir, matcher, nil
}

// The upper limits of renew_threshold_days and fail_backoff_minutes (Kong
// has none). Both keep the duration Settings makes of them far from
// time.Duration's limit of about 292 years.
const (
	MaxRenewThresholdDays = 3650   // 10 years
	MaxFailBackoffMinutes = 525600 // a year
)

// checkNumber checks a count of days or minutes: 0 or more, and at most
// limit (described as limitText).
func checkNumber(field string, v float64, zero string, limit float64, limitText string) error {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return fmt.Errorf("%s: expected a number of 0 or more, got %v", field, v)
	case v < 0:
		return fmt.Errorf("%s: must not be negative%s, got %v", field, zero, v)
	case v > limit:
		return fmt.Errorf("%s: must be at most %v (%s), got %v", field, limit, limitText, v)
	}
	return nil
}

// durationRange is the range of a duration field: 0 (left out) is its
// default, anything else must be within min and max. The limits are
// written as in a config (minText, maxText).
type durationRange struct {
	min, max         time.Duration
	minText, maxText string
	def              string
}

// The ranges of the duration fields; the maxima keep every duration the
// app derives from them (twice issue_timeout, a jittered renew_interval)
// far from time.Duration's limit.
var (
	issueTimeoutRange      = durationRange{10 * time.Second, 24 * time.Hour, "10s", "24h", "90s"}
	cacheSyncIntervalRange = durationRange{500 * time.Millisecond, 24 * time.Hour, "500ms", "24h", "10s"}
	renewIntervalRange     = durationRange{time.Minute, 365 * 24 * time.Hour, "1m", "8760h (365 days)", "24h"}
	renewFirstDelayRange   = durationRange{0, 365 * 24 * time.Hour, "0", "8760h (365 days)", "1m"}
)

func (r durationRange) check(field string, d time.Duration) error {
	switch {
	case d < 0:
		return fmt.Errorf("%s: must not be negative, got %s", field, d)
	case d != 0 && r.min == 0 && d > r.max:
		return fmt.Errorf("%s: must be at most %s, or 0 for the default (%s), got %s", field, r.maxText, r.def, d)
	case d != 0 && (d < r.min || d > r.max):
		return fmt.Errorf("%s: must be between %s and %s, or 0 for the default (%s), got %s", field, r.minText, r.maxText, r.def, d)
	}
	return nil
}

// Settings checks every field, expands placeholders, reads the trusted
// roots and applies the defaults. Errors name the field and say how to fix
// it; secrets never appear in them.
func (c *Config) Settings() (Settings, error) {
	var s Settings
	var err error
	if s.Directory, s.Matcher, err = c.check(); err != nil {
		return s, err
	}

	email, err := placeholder.Expand("account_email", c.AccountEmail)
	if err != nil {
		return s, err
	}
	switch {
	case email == "":
		return s, errors.New(`account_email: required: set the email address of the ACME account, e.g. "account_email": "ops@example.com"`)
	case !strings.Contains(email, "@") || strings.ContainsAny(email, " \t\r\n<>"):
		return s, fmt.Errorf("account_email: invalid value: %s: expected an email address such as ops@example.com", email)
	}
	s.Email = email

	primary, err := c.primaryCA().settings("", s.Directory)
	if err != nil {
		return s, err
	}
	s.EAB, s.Roots, s.Chains = primary.EAB, primary.Roots, primary.Chains
	if s.Fallback, err = c.fallbackSettings(); err != nil {
		return s, err
	}

	rsaBits := c.RSAKeySize
	if rsaBits == 0 {
		rsaBits = 4096
	}
	s.Keys = keyGenerator{ecc: c.CertType == "ecc", rsaBits: rsaBits}
	if c.AccountKey != "" {
		if s.AccountKey, err = placeholder.ExpandSecret("account_key", c.AccountKey); err != nil {
			return s, err
		}
		if _, err := certmagic.PEMDecodePrivateKey([]byte(s.AccountKey)); err != nil {
			return s, errors.New("account_key: not a PEM-encoded private key: give the key's PEM text, e.g. {file./etc/caddy/account.key} (value redacted)")
		}
	}

	s.AllowAny = c.AllowAnyDomain
	s.IPv4 = c.EnableIPv4CommonName == nil || *c.EnableIPv4CommonName
	s.DisableARI = c.DisableARI
	s.HTTPPort = c.HTTPPort
	s.IssueTimeout = durationOr(c.IssueTimeout, 90*time.Second)
	s.FailBackoff = 5 * time.Minute
	if c.FailBackoffMinutes != nil {
		s.FailBackoff = time.Duration(*c.FailBackoffMinutes * float64(time.Minute))
	}
	days := 14.0
	if c.RenewThresholdDays != nil {
		days = *c.RenewThresholdDays
	}
	s.RenewThreshold = time.Duration(days * float64(24*time.Hour))
	s.RenewInterval = time.Duration(c.RenewInterval)
	s.RenewFirstDelay = durationOr(c.RenewFirstDelay, time.Minute)
	s.CacheSyncInterval = durationOr(c.CacheSyncInterval, 10*time.Second)
	s.CacheCapacity = c.CacheCapacity
	if s.CacheCapacity == 0 {
		s.CacheCapacity = DefaultCacheCapacity
	}
	s.MaxPending = c.MaxPendingOrders
	if s.MaxPending == 0 {
		s.MaxPending = DefaultMaxPending
	}
	s.Budget = DefaultBudget
	if c.DomainBudget != nil {
		s.Budget = *c.DomainBudget
	}
	s.BudgetWindow = durationOr(c.DomainBudgetWindow, 7*24*time.Hour)
	s.IPv6 = c.EnableIPv6
	if err := c.challengeSettings(&s); err != nil {
		return s, err
	}
	return s, nil
}

func durationOr(d caddy.Duration, def time.Duration) time.Duration {
	if d > 0 {
		return time.Duration(d)
	}
	return def
}

// Allow reports whether a certificate may be served or obtained for name
// (already normalised): the IPv4 rule, then allow_any_domain, then the allowlist (whose refusal wraps ErrNotAllowed
// and issuance.ErrNotListed: the domains added through the admin API and
// the permission module may still allow the name). Its cost does not
// depend on the number of domains.
func (s *Settings) Allow(name string) error {
	if name == "" {
		return errors.New("no server name")
	}
	if ip := net.ParseIP(name); ip != nil {
		switch {
		case ip.To4() != nil && !s.IPv4:
			return fmt.Errorf("%s: IPv4 addresses are not served (enable_ipv4_common_name is false)", name)
		case ip.To4() == nil && !s.IPv6:
			return fmt.Errorf("%s: IPv6 addresses are not served (enable_ipv6 is false)", name)
		}
	}
	if s.AllowAny || s.Matcher.Match(name) {
		return nil
	}
	return fmt.Errorf("%s: %w", name, ErrNotAllowed)
}

// Orderable reports whether the CA may be asked for a certificate for
// name: with a public CA (trusted_roots not set), not for a name no public
// CA issues for (ErrNotPublic). It is checked before an order, not on
// every handshake: a certificate in memory or storage is served.
func (s *Settings) Orderable(name string) error {
	if s.Roots != nil || qualifiesForPublicCA(name) {
		return nil
	}
	for _, ca := range s.Fallback {
		if ca.Roots != nil {
			return nil // a private fallback CA may issue it
		}
	}
	return fmt.Errorf("%s: %w", name, ErrNotPublic)
}

// qualifiesForPublicCA reports whether a public CA may issue a
// certificate for name: certmagic.SubjectQualifiesForPublicCert, which
// lets a single label (intranet) and the broadcast address through.
func qualifiesForPublicCA(name string) bool {
	if ip := net.ParseIP(name); ip != nil {
		if ip.Equal(net.IPv4bcast) {
			return false
		}
	} else if !strings.Contains(name, ".") {
		return false
	}
	return certmagic.SubjectQualifiesForPublicCert(name)
}

// NewIssuer returns the app's ACME issuer for s over magic (whose storage
// it uses): the CA and account of s, its challenges (HTTP-01 only by
// default, as Kong) and profile, never another CA. The app and the data
// migration both make their issuer here, so that the issuer key, and with
// it every storage key of a certificate, is the same.
func NewIssuer(magic *certmagic.Config, s Settings, logger *zap.Logger) *certmagic.ACMEIssuer {
	template := certmagic.ACMEIssuer{
		CA:                        s.Directory,
		TestCA:                    s.Directory, // never fall back to another CA
		Email:                     s.Email,
		Agreed:                    true, // see TOSAccepted
		ExternalAccount:           s.EAB,
		AccountKeyPEM:             s.AccountKey,
		TrustedRoots:              s.Roots,
		AltHTTPPort:               s.HTTPPort,
		DisableHTTPChallenge:      !s.HTTPChallenge,
		DisableTLSALPNChallenge:   !s.TLSALPNChallenge,
		AltTLSALPNPort:            s.TLSALPNPort,
		ListenHost:                s.BindHost,
		DisableDistributedSolvers: s.NoDistributed,
		Profile:                   s.Profile,
		PreferredChains:           s.Chains,
		CertObtainTimeout:         s.IssueTimeout,
		Logger:                    logger,
	}
	if s.DNSSolver != nil { // never a nil *DNS01Solver in the interface
		template.DNS01Solver = issuance.WatchSolver(s.DNSSolver)
	}
	return certmagic.NewACMEIssuer(magic, template)
}

// IsLetsEncrypt reports whether the directory is Let's Encrypt's
// production or staging endpoint, with or without /directory: its terms of
// service must be accepted explicitly. (Kong's check compares the bare
// origins only.)
func IsLetsEncrypt(directory string) bool {
	u, err := url.Parse(directory)
	if err != nil {
		return false
	}
	host := strings.ToLower(u.Hostname())
	return host == "acme-v02.api.letsencrypt.org" || host == "acme-staging-v02.api.letsencrypt.org"
}

// DefaultCacheCapacity is cache_capacity's default.
const DefaultCacheCapacity = 10000

// The defaults of max_pending_orders and domain_budget.
const (
	DefaultMaxPending = 200
	DefaultBudget     = 50
)

// ErrNotAllowed is returned (wrapped) for a name the app does not serve.
// It wraps issuance.ErrNotListed.
var ErrNotAllowed error = notAllowedError{}

type notAllowedError struct{}

func (notAllowedError) Error() string {
	return "not allowed by domains (add it to domains, POST it to /acme/domains, or set allow_any_domain or permission)"
}

func (notAllowedError) Unwrap() error { return issuance.ErrNotListed }

// ErrNotPublic is returned (wrapped) for a name no public CA issues a
// certificate for (certmagic.SubjectQualifiesForPublicCert: a single
// label, localhost, .local, .internal, .home.arpa, a private, loopback,
// link-local, unspecified or broadcast address) when the CA is public
// (trusted_roots is not set).
var ErrNotPublic = errors.New("a public CA does not issue certificates for this name (local name or non-public address); with a private CA, set trusted_roots")
