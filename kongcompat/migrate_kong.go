package kongcompat

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/storage/consul"
	"github.com/acmekit/caddy-acme/storage/kong"
	"github.com/acmekit/caddy-acme/storage/redis"
	"github.com/acmekit/caddy-acme/storage/vault"
)

// Kong's storage keys (kong/plugins/acme/reserved_words.lua, client.lua).
const (
	kongAccountPrefix     = "kong_acme:account:"
	kongCertKeyPrefix     = "kong_acme:cert_key:"
	kongRenewConfigPrefix = "kong_acme:renew_config:"
)

// kongAccountKey is the storage key of Kong's ACME account:
// kong_acme:account:<api_uri as configured>:<base64(account_email)>.
func kongAccountKey(apiURI, email string) string {
	return kongAccountPrefix + apiURI + ":" + base64.StdEncoding.EncodeToString([]byte(email))
}

// kongSide is what the data migration learns from Kong's configuration:
// where Kong kept its ACME data and with which account settings. It is
// read with the adapter, so the connection settings are exactly those
// the adapted config uses.
type kongSide struct {
	file    string
	adapted []byte // the adapted Caddy config: the default target

	apiURI string // config.api_uri exactly as configured: part of the account key
	email  string // config.account_email, placeholders expanded

	storage    string // shm, kong, redis, consul, vault
	storageMod any    // the adapted storage module (nil for shm)

	// db is Kong's PostgreSQL database, when the migration reads it:
	// `kong` storage (the acme_storage table) or database mode (the
	// certificates and snis tables).
	db     *kong.Storage
	dbMode bool   // Kong in traditional database mode: certificates are Kong entities
	dbNote string // why database-mode certificates are not read, when Kong may have had them
}

// loadKongSide reads and adapts Kong's configuration.
func loadKongSide(from, kongConf string, lookup func(string) (string, bool)) (*kongSide, error) {
	body, err := readFileLimited(from, MaxKongConfigSize, "--from (Kong's configuration)")
	if err != nil {
		if isTooLarge(err) {
			return nil, err
		}
		return nil, fmt.Errorf("reading Kong's configuration: %w", err)
	}
	confWhat := "--kong-conf (kong.conf)"
	if kongConf == "" {
		kongConf, _ = lookup("KONG_CONF")
		confWhat = "$KONG_CONF (kong.conf)"
	}
	c := &converter{env: lookup, file: from}
	out, err := c.convert(body, kongConf)
	if err != nil {
		var tl *TooLargeError
		if errors.As(err, &tl) && tl.Path == kongConf {
			tl.What = confWhat
		}
		return nil, err
	}
	k := &kongSide{file: from, adapted: out, storageMod: c.adaptedStorage}
	cfg := c.plugin.v.get("config")
	k.storage = c.storageName(cfg)
	k.apiURI = c.adapted.APIURI
	if k.apiURI == "" {
		k.apiURI = defaultAPI // Kong fills the default into the plugin's config
	}
	if k.email, err = placeholder.Expand("account_email", c.adapted.AccountEmail); err != nil {
		return nil, err
	}

	k.dbMode = c.database == "postgres" && c.role == "traditional"
	pgGiven := false
	for _, key := range kongConfKeys {
		if _, ok := c.kc.get(key); ok && strings.HasPrefix(key, "pg_") {
			pgGiven = true
		}
	}
	switch {
	case k.storage == "kong":
		k.db = c.adaptedStorage.(*kong.Storage)
	case k.dbMode && (c.databaseSet || pgGiven):
		n := len(c.warnings)
		k.db, err = c.kong(cfg) // kong.conf's pg_* settings, as for `kong` storage
		c.warnings = c.warnings[:n]
		if err != nil {
			return nil, err
		}
	}
	switch {
	case !k.dbMode:
	case k.db == nil:
		k.dbMode = false
		k.dbNote = "Kong's database is not read: in database mode Kong kept its certificates there (certificates and snis tagged managed-by-acme), but no kong.conf (--kong-conf, KONG_CONF) or KONG_PG_* variable says where it is"
	}
	return k, nil
}

// kongStore reads the storage lua-resty-acme wrote for Kong, with its
// semantics: a key whose TTL has passed is absent (nothing is deleted).
// Keys are Kong's logical keys; for Consul and Vault, whose adapters
// mangle `/` into `-`, both the logical and the mangled form are
// accepted, and list returns the mangled form (as Kong's list does).
type kongStore interface {
	// where names the store, and describe a key in it, for the report
	// (without secrets).
	where() string
	describe(key string) string
	get(ctx context.Context, key string) (value string, found bool, err error)
	list(ctx context.Context, prefix string) ([]string, error)
	close()
}

// openKongStore connects to the store Kong's storage setting names (nil
// for shm: shared memory cannot be read from outside Kong).
func (k *kongSide) openKongStore(ctx context.Context) (kongStore, error) {
	switch s := k.storageMod.(type) {
	case *redis.Storage:
		return newRedisSource(s)
	case *consul.Storage:
		return newConsulSource(s)
	case *vault.Storage:
		return newVaultSource(ctx, s)
	case *kong.Storage:
		return newPostgresSource(ctx, s)
	}
	return nil, nil
}

// mangle is lua-resty-acme's key encoding for Consul and Vault: every /
// becomes - (valid_vault_key, consul.lua).
func mangle(key string) string {
	return strings.ReplaceAll(key, "/", "-")
}
