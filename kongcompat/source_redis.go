package kongcompat

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/storage/redis"
)

// redisSource reads Kong's keys in Redis: <namespace><key>, plain
// strings, expiry by Redis TTL (lua-resty-acme redis.lua).
type redisSource struct {
	c    goredis.UniversalClient
	ns   string
	addr string
}

func newRedisSource(s *redis.Storage) (*redisSource, error) {
	opts := &goredis.UniversalOptions{
		MasterName:            s.MasterName,
		IsClusterMode:         s.Cluster,
		DB:                    s.DB,
		DialTimeout:           time.Duration(s.DialTimeout),
		ReadTimeout:           time.Duration(s.ReadTimeout),
		WriteTimeout:          time.Duration(s.WriteTimeout),
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
		ClientName:            "caddy-acme-migrate",
	}
	var err error
	for _, a := range s.Addresses {
		addr, err := placeholder.Expand("addresses", a)
		if err != nil {
			return nil, err
		}
		opts.Addrs = append(opts.Addrs, addr)
	}
	for _, f := range []struct {
		name, in string
		out      *string
		expand   func(field, v string) (string, error)
	}{
		{"username", s.Username, &opts.Username, placeholder.Expand},
		{"password", s.Password, &opts.Password, placeholder.ExpandSecret},
		{"sentinel_username", s.SentinelUsername, &opts.SentinelUsername, placeholder.Expand},
		{"sentinel_password", s.SentinelPassword, &opts.SentinelPassword, placeholder.ExpandSecret},
	} {
		if *f.out, err = f.expand(f.name, f.in); err != nil {
			return nil, err
		}
	}
	if opts.TLSConfig, _, err = s.TLS.ClientConfig(); err != nil {
		return nil, fmt.Errorf("redis tls: %w", err)
	}
	ns, err := placeholder.Expand("key_prefix", s.KeyPrefix)
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
