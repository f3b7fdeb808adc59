package kongcompat

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// redisSource reads Kong's keys in Redis: <namespace><key>, plain
// strings, expiry by Redis TTL (lua-resty-acme redis.lua).
type redisSource struct {
	c    goredis.UniversalClient
	ns   string
	addr string
}

func newRedisSource(s *redisStorage) (*redisSource, error) {
	opts := &goredis.UniversalOptions{
		MasterName:            s.MasterName,
		IsClusterMode:         s.Cluster,
		DB:                    s.DB,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
		ClientName:            "caddy-acme-migrate",
	}
	var err error
	for _, a := range s.Addresses {
		addr, err := expand("addresses", a)
		if err != nil {
			return nil, err
		}
		opts.Addrs = append(opts.Addrs, addr)
	}
	for _, f := range []struct {
		name string
		in   string
		out  *string
	}{
		{"username", s.Username, &opts.Username},
		{"password", s.Password, &opts.Password},
		{"sentinel_username", s.SentinelUsername, &opts.SentinelUsername},
		{"sentinel_password", s.SentinelPassword, &opts.SentinelPassword},
	} {
		if *f.out, err = expand(f.name, f.in); err != nil {
			return nil, err
		}
	}
	for _, d := range []struct {
		in  string
		out *time.Duration
	}{{s.DialTimeout, &opts.DialTimeout}, {s.ReadTimeout, &opts.ReadTimeout}, {s.WriteTimeout, &opts.WriteTimeout}} {
		if d.in != "" {
			if *d.out, err = time.ParseDuration(d.in); err != nil {
				return nil, fmt.Errorf("redis timeout %q: %w", d.in, err)
			}
		}
	}
	if opts.TLSConfig, err = s.TLS.clientConfig(); err != nil {
		return nil, fmt.Errorf("redis tls: %w", err)
	}
	ns, err := expand("key_prefix", s.KeyPrefix)
	if err != nil {
		return nil, err
	}
	return &redisSource{c: goredis.NewUniversalClient(opts), ns: ns, addr: strings.Join(opts.Addrs, ",")}, nil
}

func (r *redisSource) where() string {
	return fmt.Sprintf("redis %s, namespace %q", r.addr, r.ns)
}

func (r *redisSource) describe(key string) string {
	return fmt.Sprintf("redis %s key %s", r.addr, r.ns+key)
}

func (r *redisSource) get(ctx context.Context, key string) (string, bool, error) {
	v, err := r.c.Get(ctx, r.ns+key).Result()
	switch {
	case errors.Is(err, goredis.Nil):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("redis %s: GET %s: %w", r.addr, r.ns+key, err)
	}
	return v, true, nil
}

// list SCANs <namespace><prefix>* (on every master of a Cluster), as
// Kong's list does, with the namespace and prefix matched literally.
func (r *redisSource) list(ctx context.Context, prefix string) ([]string, error) {
	pattern := globEscape(r.ns+prefix) + "*"
	seen := make(map[string]bool)
	scan := func(ctx context.Context, c goredis.Cmdable) error {
		iter := c.Scan(ctx, 0, pattern, 100).Iterator()
		for iter.Next(ctx) {
			if k, ok := strings.CutPrefix(iter.Val(), r.ns); ok {
				seen[k] = true
			}
		}
		return iter.Err()
	}
	var err error
	if cc, ok := r.c.(*goredis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, r.c)
	}
	if err != nil {
		return nil, fmt.Errorf("redis %s: SCAN %s: %w", r.addr, pattern, err)
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	return keys, nil
}

func (r *redisSource) close() { _ = r.c.Close() }

// globEscape quotes the characters SCAN MATCH patterns interpret.
func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`).Replace(s)
}

// clientConfig builds the TLS client configuration of an adapted tls
// object (nil: no TLS).
func (t *tlsConfig) clientConfig() (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	serverName, err := expand("tls.server_name", t.ServerName)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, InsecureSkipVerify: t.InsecureSkipVerify}
	caFile, err := expand("tls.ca_file", t.CAFile)
	if err != nil || caFile == "" {
		return cfg, err
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("tls.ca_file: %w", err)
	}
	cfg.RootCAs = x509.NewCertPool()
	if !cfg.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls.ca_file: no PEM certificate in %s", caFile)
	}
	return cfg, nil
}
