package kongcompat

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/storage/consul"
)

// consulSource reads Kong's keys in Consul KV (lua-resty-acme
// consul.lua): <kv_path>/<key with / mangled to ->, raw values, and an
// absolute expiry in milliseconds in the key's flags (0: none), which
// Kong checks lazily on read. An expired key is absent here too, but not
// deleted.
type consulSource struct {
	kv     *api.KV
	prefix string // kv_path without its slashes, "" for the root
	addr   string
	now    func() time.Time
}

func newConsulSource(s *consul.Storage) (*consulSource, error) {
	addr, err := placeholder.Expand("address", s.Address)
	if err != nil {
		return nil, err
	}
	token, err := placeholder.ExpandSecret("token", s.Token)
	if err != nil {
		return nil, err
	}
	prefix, err := placeholder.Expand("key_prefix", s.KeyPrefix)
	if err != nil {
		return nil, err
	}
	tlsCfg, _, err := s.TLS.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("consul tls: %w", err)
	}
	scheme := s.Scheme
	if scheme == "" {
		scheme = "http"
	}
	timeout := 2 * time.Second // lua-resty-acme's default
	if s.Timeout > 0 {
		timeout = time.Duration(s.Timeout)
	}
	transport := &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}
	client, err := api.NewClient(&api.Config{
		Address: addr,
		Scheme:  scheme,
		HttpClient: &http.Client{
			Timeout:   timeout,
			Transport: tokenTransport{base: transport, token: token},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("consul %s: %w", addr, err)
	}
	return &consulSource{kv: client.KV(), prefix: strings.Trim(prefix, "/"), addr: addr, now: time.Now}, nil
}

// tokenTransport sends Kong's token (X-Consul-Token) or none, and no
// namespace, partition or datacenter: api.NewClient fills those from
// Consul's environment variables (CONSUL_HTTP_TOKEN, CONSUL_NAMESPACE,
// …), which are not Kong's settings.
type tokenTransport struct {
	base  http.RoundTripper
	token string
}

func (t tokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Del("X-Consul-Token")
	req.Header.Del("Authorization")
	if t.token != "" {
		req.Header.Set("X-Consul-Token", t.token)
	}
	q := req.URL.Query()
	for _, p := range []string{"ns", "partition", "dc"} {
		q.Del(p)
	}
	req.URL.RawQuery = q.Encode()
	return t.base.RoundTrip(req)
}

func (c *consulSource) path(key string) string {
	if c.prefix == "" {
		return mangle(key)
	}
	return c.prefix + "/" + mangle(key)
}

func (c *consulSource) where() string {
	return fmt.Sprintf("consul %s, kv_path /%s", c.addr, c.prefix)
}

func (c *consulSource) describe(key string) string {
	return fmt.Sprintf("consul %s key %s", c.addr, c.path(key))
}

func (c *consulSource) get(ctx context.Context, key string) (string, bool, error) {
	pair, _, err := c.kv.Get(c.path(key), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", false, fmt.Errorf("consul %s: reading %s: %w", c.addr, c.path(key), err)
	}
	if pair == nil {
		return "", false, nil
	}
	if pair.Flags > 0 && pair.Flags < uint64(c.now().UnixMilli()) {
		return "", false, nil // expired (Kong would delete it on this read)
	}
	return string(pair.Value), true, nil
}

func (c *consulSource) list(ctx context.Context, prefix string) ([]string, error) {
	keys, _, err := c.kv.Keys(c.path(prefix), "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul %s: listing %s: %w", c.addr, c.path(prefix), err)
	}
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if name := path.Base(k); strings.HasPrefix(name, mangle(prefix)) && !strings.HasSuffix(k, "/") {
			out = append(out, name)
		}
	}
	return out, nil
}

func (c *consulSource) close() {}
