// Package backend is what caddy-acme's storage modules (acme_redis,
// acme_consul, acme_vault, acme_kong) share: the common configuration fields
// (encryption at rest, lock lease and refresh), AES-256-GCM sealing of
// values, key arithmetic for the certmagic key space, owner tokens and lease
// refreshers for locks, and a typed pool of clients shared across config
// reloads.
package backend
