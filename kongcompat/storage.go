package kongcompat

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/acmekit/caddy-acme/storage/consul"
	"github.com/acmekit/caddy-acme/storage/kong"
	"github.com/acmekit/caddy-acme/storage/redis"
	"github.com/acmekit/caddy-acme/storage/vault"
)

// storage maps storage and storage_config to a storage module: the
// module's own struct (for the data migration, which reads Kong's store
// with the same settings) and its JSON, made as Caddy's Caddyfile adapters
// make a module's; nil, nil for Caddy's default storage.
func (c *converter) storage(cfg *value) (any, json.RawMessage, error) {
	name := c.storageName(cfg)
	sc := cfg.get("storage_config")
	var mod any
	var err error
	switch name {
	case "shm":
		c.warn(lineOf(cfg, "storage"), "config.storage",
			"storage shm: Kong kept the ACME account, certificates and challenges in a shared memory zone, which is lost on restart and not shared between nodes; the adapted config uses Caddy's default storage (the file system, or the global storage), which persists; for a cluster, choose redis, consul, vault or kong storage")
		return nil, nil, nil
	case "redis":
		mod, err = c.redis(sc.get("redis"))
	case "consul":
		mod = c.consul(sc.get("consul"))
	case "vault":
		mod, err = c.vault(sc.get("vault"))
	case "kong":
		mod, err = c.kong(cfg)
	}
	if err != nil {
		return nil, nil, err
	}
	var warnings []caddyconfig.Warning
	raw := caddyconfig.JSONModuleObject(mod, "module", "acme_"+name, &warnings)
	if raw == nil {
		msg := "unknown error"
		if len(warnings) > 0 {
			msg = warnings[0].Message
		}
		return nil, nil, fmt.Errorf("encoding the storage: %s", msg)
	}
	return mod, raw, nil
}

// hostPort joins a host and a port that may be placeholders.
func hostPort(host, port *value, def int) string {
	p := strconv.Itoa(def)
	if port != nil {
		p = caddyString(port)
		if !port.dyn {
			p = strconv.Itoa(int(port.num))
		}
	}
	if host.dyn {
		return host.str + ":" + p
	}
	return net.JoinHostPort(escapeBraces(host.str), p)
}

// millis returns a Kong timeout in milliseconds as a Caddy duration, 0
// for 0 (the module's default); longer than 2^31-2 ms (Kong's limit for
// Redis timeouts, about 24 days) counts as that.
func millis(v *value) caddy.Duration {
	if v == nil || v.num <= 0 {
		return 0
	}
	ms := min(v.num, 1<<31-2)
	return caddy.Duration(ms * float64(time.Millisecond))
}

// caFile returns the CA file of lua_ssl_trusted_certificate for a TLS
// connection that Kong verified, warning when there are several.
func (c *converter) caFile(path string, line int) string {
	files := c.kc.caCertFiles()
	switch len(files) {
	case 0:
		return ""
	case 1:
		return escapeBraces(files[0])
	}
	c.warn(line, path, "kong.conf's lua_ssl_trusted_certificate lists %d files: the adapted config verifies with the system's roots; give one PEM file holding the CA certificates in the storage's tls.ca_file", len(files))
	return ""
}

func (c *converter) redis(r *value) (*redis.Storage, error) {
	const path = "config.storage_config.redis"
	if r == nil {
		r = &value{kind: kObject}
	}
	s := &redis.Storage{}
	if ca := r.get("cloud_authentication"); ca != nil && ca.get("auth_provider") != nil {
		return nil, c.errorf(ca.line, "%s: %s.cloud_authentication: cloud authentication (%s IAM) is not supported by caddy-acme's acme_redis yet: connect with a Redis user and password (username, password) instead",
			c.subject(), path, strings.ToUpper(ca.get("auth_provider").text()))
	}
	cluster, sentinel := r.get("cluster_nodes"), r.get("sentinel_nodes")
	if !nonEmpty(cluster) {
		cluster = nil
	}
	if !nonEmpty(sentinel) {
		sentinel = nil
	}
	master := r.get("sentinel_master")
	switch {
	case cluster != nil && (sentinel != nil || master != nil):
		return nil, c.errorf(cluster.line, "%s: schema violation (%s: only one or none of these fields must be set: 'cluster_nodes', 'sentinel_nodes')", c.subject(), path)
	case (sentinel == nil) != (master == nil):
		return nil, c.errorf(r.line, "%s: schema violation (%s: all or none of these fields must be set: 'sentinel_master', 'sentinel_nodes')", c.subject(), path)
	}
	host := r.get("host")
	switch {
	case cluster != nil:
		for _, n := range cluster.arr {
			ip := n.get("ip")
			if ip == nil {
				ip = &value{kind: kString, str: "127.0.0.1"}
			}
			s.Addresses = append(s.Addresses, hostPort(ip, n.get("port"), 6379))
		}
		s.Cluster = true
	case sentinel != nil:
		for _, n := range sentinel.arr {
			h := n.get("host")
			if h == nil {
				h = &value{kind: kString, str: "127.0.0.1"}
			}
			s.Addresses = append(s.Addresses, hostPort(h, n.get("port"), 6379))
		}
		s.MasterName = caddyString(master)
		if role := r.get("sentinel_role"); role != nil && role.str != "master" {
			c.warn(role.line, path+".sentinel_role", "sentinel_role %s: caddy-acme writes to Redis, so it always uses the master the Sentinels name", role.str)
		}
	default:
		s.Addresses = []string{hostPort(host, r.get("port"), 6379)}
	}
	if host != nil && (cluster != nil || sentinel != nil) {
		c.warn(host.line, path+".host", "host and port are ignored: the %s nodes are used", map[bool]string{true: "cluster", false: "sentinel"}[cluster != nil])
	}
	s.Username = caddyString(r.get("username"))
	s.Password = caddyString(r.get("password"))
	if sentinel != nil {
		s.SentinelUsername = caddyString(r.get("sentinel_username"))
		s.SentinelPassword = caddyString(r.get("sentinel_password"))
	}
	if db := r.get("database"); db != nil && db.num != 0 {
		if cluster != nil {
			c.warn(db.line, path+".database", "database %s is ignored: Redis Cluster has only database 0", show(db))
		} else {
			s.DB = int(db.num)
		}
	}
	if ns := r.get("extra_options").get("namespace"); ns != nil && ns.str != "" {
		s.KeyPrefix = caddyString(ns)
	}
	if ssl := r.get("ssl"); ssl != nil && ssl.b {
		s.TLS = &redis.TLS{ServerName: caddyString(r.get("server_name"))}
		if v := r.get("ssl_verify"); v != nil && !v.b {
			s.TLS.InsecureSkipVerify = true
			c.warn(v.line, path+".ssl_verify", "ssl_verify is false: the adapted config does not verify the Redis server's certificate either (tls.insecure_skip_verify); set ssl_verify to true, with the CA in kong.conf's lua_ssl_trusted_certificate or the storage's tls.ca_file")
		} else {
			s.TLS.CAFile = c.caFile(path+".ssl_verify", r.line)
		}
	}
	timeoutOr := func(name string) caddy.Duration {
		if v := millis(r.get(name)); v != 0 {
			return v
		}
		return millis(r.get("timeout"))
	}
	s.DialTimeout = timeoutOr("connect_timeout")
	s.ReadTimeout = timeoutOr("read_timeout")
	s.WriteTimeout = timeoutOr("send_timeout")
	if v := r.get("connection_is_proxied"); v != nil && v.b {
		c.warn(v.line, path+".connection_is_proxied", "connection_is_proxied: the proxy at host:port is used as a standalone Redis server")
	}
	return s, nil
}

func (c *converter) consul(v *value) *consul.Storage {
	const path = "config.storage_config.consul"
	if v == nil {
		v = &value{kind: kObject}
	}
	s := &consul.Storage{}
	host := v.get("host")
	if host == nil {
		host = &value{kind: kString, str: "127.0.0.1"}
	}
	s.Address = hostPort(host, v.get("port"), 8500)
	if h := v.get("https"); h != nil && h.b {
		s.Scheme = "https"
		if ca := c.caFile(path+".https", h.line); ca != "" {
			s.TLS = &consul.TLS{CAFile: ca}
		}
	}
	s.Token = caddyString(v.get("token"))
	kv := "/acme" // lua-resty-acme's default
	if p := v.get("kv_path"); p != nil {
		kv = p.str
	}
	if prefix := strings.Trim(kv, "/"); prefix != "" {
		s.KeyPrefix = escapeBraces(prefix)
	} else {
		c.warn(lineOf(v, "kv_path"), path+".kv_path", "kv_path %q is the root of the KV store: caddy-acme keeps its keys under a folder, caddy-acme", kv)
	}
	s.Timeout = millis(v.get("timeout"))
	return s
}

func (c *converter) vault(v *value) (*vault.Storage, error) {
	const path = "config.storage_config.vault"
	if v == nil {
		v = &value{kind: kObject}
	}
	s := &vault.Storage{}
	host := v.get("host")
	if host == nil {
		host = &value{kind: kString, str: "127.0.0.1"}
	}
	scheme := "http"
	https := v.get("https") != nil && v.get("https").b
	if https {
		scheme = "https"
	}
	s.Address = scheme + "://" + hostPort(host, v.get("port"), 8200)
	kv := "/acme" // lua-resty-acme's default
	if p := v.get("kv_path"); p != nil {
		kv = p.str
	}
	mount, rest, _ := strings.Cut(strings.Trim(kv, "/"), "/")
	if mount == "" {
		return nil, c.errorf(lineOf(v, "kv_path"), "%s: %s.kv_path: %q names no KV version 2 mount", c.subject(), path, kv)
	}
	s.Mount = escapeBraces(mount)
	if rest = strings.Trim(rest, "/"); rest != "" {
		s.PathPrefix = escapeBraces(rest)
	}
	switch m := v.get("auth_method"); {
	case m != nil && m.str == "kubernetes":
		s.AuthMethod = "kubernetes"
		role := v.get("auth_role")
		if role == nil {
			return nil, c.errorf(m.line, "%s: %s.auth_role: required with auth_method kubernetes (the Vault role to log in as)", c.subject(), path)
		}
		s.Role = escapeBraces(role.str)
		if j := v.get("jwt_path"); j != nil {
			s.JWTPath = escapeBraces(j.str)
		}
		if a := v.get("auth_path"); a != nil {
			s.AuthMount = escapeBraces(strings.Trim(a.str, "/"))
		}
	default:
		tok := v.get("token")
		if tok == nil {
			return nil, c.errorf(lineOf(v, "auth_method"), "%s: %s.token: required with auth_method token", c.subject(), path)
		}
		s.Token = caddyString(tok)
	}
	if https {
		t := &vault.TLS{}
		if n := v.get("tls_server_name"); n != nil {
			t.ServerName = escapeBraces(n.str)
		}
		if tv := v.get("tls_verify"); tv != nil && !tv.b {
			t.InsecureSkipVerify = true
			c.warn(tv.line, path+".tls_verify", "tls_verify is false: the adapted config does not verify Vault's certificate either (tls.insecure_skip_verify); set tls_verify to true, with the CA in kong.conf's lua_ssl_trusted_certificate or the storage's tls.ca_file")
		} else {
			t.CAFile = c.caFile(path+".tls_verify", v.line)
		}
		if *t != (vault.TLS{}) {
			s.TLS = t
		}
	}
	s.Timeout = millis(v.get("timeout"))
	return s, nil
}

// kong maps `kong` storage: Kong's own PostgreSQL database, connected to
// with kong.conf's pg_* settings and Kong's defaults for those not set.
func (c *converter) kong(cfg *value) (*kong.Storage, error) {
	line := lineOf(cfg, "storage")
	s := &kong.Storage{PgHost: "127.0.0.1", PgPort: 5432, PgUser: "kong", PgDatabase: "kong"}
	given := false
	for _, f := range []struct {
		key string
		out *string
	}{
		{"pg_host", &s.PgHost},
		{"pg_user", &s.PgUser},
		{"pg_database", &s.PgDatabase},
		{"pg_schema", &s.PgSchema},
		{"pg_ssl_cert", &s.PgSSLCert},
		{"pg_ssl_cert_key", &s.PgSSLCertKey},
	} {
		v, ok := c.kc.get(f.key)
		if !ok {
			continue
		}
		given = true
		val, err := c.confString(f.key, v)
		if err != nil {
			return nil, err
		}
		*f.out = val
	}
	if v, ok := c.kc.get("pg_password"); ok {
		given = true
		switch v.env {
		case "KONG_PG_PASSWORD":
			s.PgPassword = "{env.KONG_PG_PASSWORD}"
		case "KONG_PG_PASSWORD_FILE":
			if strings.ContainsAny(v.val, "{}") {
				return nil, fmt.Errorf("KONG_PG_PASSWORD_FILE: a path with { or } cannot be a Caddy {file.*} placeholder")
			}
			s.PgPassword = "{file." + v.val + "}"
		default:
			val, err := c.confString("pg_password", v)
			if err != nil {
				return nil, err
			}
			s.PgPassword = val
			if !strings.HasPrefix(v.val, "{vault://") {
				c.warn(line, "config.storage", "the pg_password of %s is copied into the adapted config; to keep it out, set KONG_PG_PASSWORD (or KONG_PG_PASSWORD_FILE) instead, which becomes a placeholder read when Caddy loads the config", c.kc.file)
			}
		}
	}
	var err error
	var set bool
	if s.PgPort, set, err = c.kc.integer("pg_port", 1, 65535); err != nil {
		return nil, err
	} else if !set {
		s.PgPort = 5432
	}
	given = given || set
	if s.PgTimeout, set, err = c.kc.integer("pg_timeout", 0, 1<<31-1); err != nil {
		return nil, err
	}
	given = given || set
	ssl, _, err := c.kc.boolean("pg_ssl")
	if err != nil {
		return nil, err
	}
	verify, _, err := c.kc.boolean("pg_ssl_verify")
	if err != nil {
		return nil, err
	}
	s.PgSSL = &ssl
	if ssl && verify {
		s.PgSSLVerify = &verify
		s.SSLRootCert = c.caFile("config.storage", line)
	}
	if c.role == "data_plane" {
		c.warn(line, "config.storage", "storage kong on a data plane: Kong's data planes read the acme_storage rows their control plane pushes; caddy-acme connects to the PostgreSQL database itself, so give the control plane's pg_* settings")
	}
	if !given {
		c.warn(line, "config.storage", "storage kong: no pg_* settings (no kong.conf given with KONG_CONF, and no KONG_PG_* variables): connecting with Kong's defaults, 127.0.0.1:5432, user kong, database kong, no password, no TLS")
	}
	return s, nil
}

// confString returns a kong.conf string value for a Caddy field,
// translating a vault reference.
func (c *converter) confString(key string, v confValue) (string, error) {
	if strings.HasPrefix(v.val, "{vault://") {
		out, err := c.res.reference(&value{kind: kString, str: v.val}, c.kc.where(key))
		if err != nil {
			return "", err
		}
		return out.str, nil
	}
	return escapeBraces(v.val), nil
}
