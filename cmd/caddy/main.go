// Command caddy is Caddy with the caddy-acme modules plugged in, built from
// this repository with `go build ./cmd/caddy`. It is what the demo and the
// tests run; users normally build the same thing with
// `xcaddy build --with github.com/acmekit/caddy-acme`.
package main

// Caddy's standard modules, a DNS provider for DNS-01 (the tests use it;
// any other dns.providers module is plugged in the same way) and
// caddy-acme are plugged in.
import (
	_ "github.com/caddy-dns/rfc2136"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/acmekit/caddy-acme"
)

func main() {
	caddycmd.Main()
}
