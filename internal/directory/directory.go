// Package directory turns Kong's api_uri into the ACME directory URL the
// acme app uses. The app and the Kong data migration share it: certmagic
// derives the issuer key, and so every storage key of a certificate, from
// that URL, so both must compute it alike.
package directory

import (
	"fmt"
	"net/url"
	"strings"
)

// Default is Kong's default api_uri: Let's Encrypt's production directory.
const Default = "https://acme-v02.api.letsencrypt.org/directory"

// URL returns the directory URL for api_uri: Default when empty; a bare
// origin gets /directory appended (Kong appends it to every URL lacking
// it, which breaks CAs whose directory has another path); any other URL is
// used as given, less trailing slashes on its path.
//
// The trailing slashes go because certmagic's issuer key (ACMEIssuer's
// IssuerKey: host, then the path with its slashes turned into hyphens and
// trimmed) is the same with and without them, and it is the storage key
// of the account and certificates: https://ca/dir and https://ca/dir/
// share one account, so they must be one CA. ACME directories are not at
// paths ending in a slash (Let's Encrypt's /directory, Pebble's /dir,
// smallstep's /acme/<name>/directory, ZeroSSL's /v2/DV90), which would
// answer 404 or another resource.
func URL(apiURI string) (string, error) {
	if apiURI == "" {
		return Default, nil
	}
	u, err := url.Parse(apiURI)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("api_uri: invalid URL %q: expected the CA's ACME directory, e.g. %s", apiURI, Default)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = strings.TrimRight(u.RawPath, "/")
	if u.Path == "" {
		u.Path, u.RawPath = "/directory", ""
	}
	return u.String(), nil
}
