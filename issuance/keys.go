package issuance

import (
	"strings"

	"github.com/caddyserver/certmagic"
)

// The storage keys the app writes beside certmagic's own. Other nodes
// sharing the storage read them, so their layout is part of the storage
// format.
const (
	// StatusKey holds the last renewal scan's status (renew.Status), as
	// the node that ran it stored it.
	StatusKey = "caddy-acme/renew_status.json"

	// CacheChangesKey holds the log of certificates renewed or deleted,
	// which every node reads to update its memory (see CacheSync).
	CacheChangesKey = "caddy-acme/cache_changes.json"

	// cacheChangesLock serialises appends to that log across nodes.
	cacheChangesLock = "caddy_acme_cache_changes"

	// DomainsKey holds the domains added at run time through the admin
	// API (/acme/domains), which every node adds to the configured
	// domains: a JSON object {"domains": [...]} of normalised entries,
	// sorted (see AddDomains).
	DomainsKey = "caddy-acme/domains.json"

	// domainsLock serialises changes of that list across nodes.
	domainsLock = "caddy_acme_domains"
)

// BackoffKey is the storage key of name's backoff record at the CA whose
// issuer key is caKey: a JSON object {"host", "ca", "failed_at", "until",
// "error"} written after the CA refused an order, which every node
// honours until failed_at + fail_backoff_minutes (the setting in force
// when it is read). Keyed by CA, so changing api_uri starts clean.
func BackoffKey(caKey, name string) string {
	return "caddy-acme/fail_backoff/" + caKey + "/" + certmagic.StorageKeys.Safe(name)
}

// RateLimitKey is the storage key of the pause of new orders to the CA
// whose issuer key is caKey in scope ("account" or a registered domain)
// after the CA answered rateLimited: a JSON object {"scope", "until",
// "error"} every node honours until "until".
func RateLimitKey(caKey, scope string) string {
	return "caddy-acme/rate_limited/" + caKey + "/" + certmagic.StorageKeys.Safe(scope)
}

// BudgetKey is the storage key of the record of the new certificates
// counted against the budget of a registered domain (see
// RegisteredDomain) at the CA whose issuer key is caKey: a JSON object
// {"domain", "certificates": [{"name", "time", "reserved", "token"}]}
// that every node reads and writes under the storage lock
// caddy_acme_budget_<domain> (see budget.go).
func BudgetKey(caKey, domain string) string {
	return "caddy-acme/budget/" + caKey + "/" + certmagic.StorageKeys.Safe(domain) + ".json"
}

// IssueLockKey is the name of the storage lock certmagic holds while it
// orders name's certificate (certmagic's Config.lockKey of its
// certIssueLockOp "issue_cert"; a test pins it).
func IssueLockKey(name string) string { return "issue_cert_" + name }

// SiteKeys are the storage keys of one certificate, as certmagic writes
// and reads them: certmagic.StorageKeys.SiteCert, SitePrivateKey, SiteMeta
// and CertsSitePrefix. The app and the data migration both take them from
// Site, so that a migrated certificate is where the app looks for it.
type SiteKeys struct {
	Cert string // the PEM chain
	Key  string // the PEM private key
	Meta string // certmagic's JSON metadata (with the ACME issuer's data and ARI)
	Dir  string // the folder of the three
}

// Site returns the storage keys of name's certificate from the issuer with
// issuerKey. It builds certmagic's certificate key once and derives the
// others from it (each of certmagic's keys costs a strings.Replacer and a
// regexp, which the renewal scan would pay several times per certificate).
func Site(issuerKey, name string) SiteKeys {
	cert := certmagic.StorageKeys.SiteCert(issuerKey, name)
	base := strings.TrimSuffix(cert, ".crt")
	dir := cert[:strings.LastIndexByte(cert, '/')]
	return SiteKeys{Cert: cert, Key: base + ".key", Meta: base + ".json", Dir: dir}
}

// CertsPrefix is the storage folder holding the certificates of the
// issuer with issuerKey, one sub-folder per name.
func CertsPrefix(issuerKey string) string { return certmagic.StorageKeys.CertsPrefix(issuerKey) }
