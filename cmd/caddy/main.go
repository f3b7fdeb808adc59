// Command caddy is Caddy with the caddy-acme modules plugged in, built from
// this repository with `go build ./cmd/caddy`. It is what the demo and the
// tests run; users normally build the same thing with
// `xcaddy build --with github.com/acmekit/caddy-acme`.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	// plug in Caddy's standard modules and caddy-acme
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// a DNS provider for DNS-01 (the demo and the tests): any other
	// dns.providers module is plugged in the same way
	_ "github.com/caddy-dns/rfc2136"

	_ "github.com/acmekit/caddy-acme"
)

func main() {
	caddycmd.Main()
}
