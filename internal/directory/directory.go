// Package directory turns Kong's api_uri into the ACME directory URL the
// acme app uses. The app and the Kong data migration share it: certmagic
// derives the issuer key, and so every storage key of a certificate, from
// that URL, so both must compute it alike.
package directory

import (
	"fmt"
	"net/url"
)

// Default is Kong's default api_uri: Let's Encrypt's production directory.
const Default = "https://acme-v02.api.letsencrypt.org/directory"

// URL returns the directory URL for api_uri: Default when empty; a bare
// origin gets /directory appended (Kong appends it to every URL lacking
// it, which breaks CAs whose directory has another path); any other URL is
// used as given.
func URL(apiURI string) (string, error) {
	if apiURI == "" {
		return Default, nil
	}
	u, err := url.Parse(apiURI)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("api_uri: invalid URL %q: expected the CA's ACME directory, e.g. %s", apiURI, Default)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/directory"
	}
	return u.String(), nil
}
