package caddyacme

// The storage modules and the kong config adapter, registered with the app
// so that one `xcaddy build --with github.com/acmekit/caddy-acme` has
// everything.
import (
	_ "github.com/acmekit/caddy-acme/kongcompat"
	_ "github.com/acmekit/caddy-acme/storage/consul"
	_ "github.com/acmekit/caddy-acme/storage/kong"
	_ "github.com/acmekit/caddy-acme/storage/redis"
	_ "github.com/acmekit/caddy-acme/storage/vault"
)
