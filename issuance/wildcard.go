package issuance

import (
	"net/netip"
	"strings"
)

// Wildcard certificates: with Options.Wildcard, a name one label below x,
// where `*.x` is an entry of the app's domains or of the domain list of
// the admin API, is served by one certificate for `*.x`, ordered once. A
// deeper name gets its own certificate (a wildcard covers one label).

// subject returns the certificate subject that serves name: `*.x` for a
// name one label below a wildcard entry `*.x` when wildcard certificates
// are on, else name itself. It allocates only when it returns a wildcard.
func (r *Runtime) subject(name string) string {
	if r.opts.Wildcard == nil {
		return name
	}
	i := strings.IndexByte(name, '.')
	if i <= 0 {
		return name
	}
	if parent := name[i+1:]; r.wildcardEntry(parent) {
		return "*." + parent
	}
	return name
}

// wildcardEntry reports whether `*.parent` is an entry of the app's
// domains (Options.Wildcard) or of the domain list, with wildcard
// certificates on.
func (r *Runtime) wildcardEntry(parent string) bool {
	if r.opts.Wildcard == nil || parent == "" {
		return false
	}
	return r.opts.Wildcard(parent) || r.domains.matcher.Load().HasWildcard(parent)
}

// storedName is the name of the certificate whose storage folder (under
// CertsPrefix) is dir: certmagic writes `*.x` as wildcard_.x and an IPv6
// address with dashes for its colons (StorageKeys.Safe), which are turned
// back; any other folder is the name itself.
func storedName(dir string) string {
	if rest, ok := strings.CutPrefix(dir, "wildcard_."); ok {
		return "*." + rest
	}
	if strings.Contains(dir, "-") && !strings.Contains(dir, ".") {
		if ip, err := netip.ParseAddr(strings.ReplaceAll(dir, "-", ":")); err == nil && ip.Is6() {
			return ip.String()
		}
	}
	return dir
}
