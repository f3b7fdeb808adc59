package kongcompat

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/acmekit/caddy-acme/internal/placeholder"
	"github.com/acmekit/caddy-acme/storage/vault"
)

// vaultSource reads Kong's keys in Vault KV version 2 (lua-resty-acme
// vault.lua): <mount>/data/<path>/<key with / mangled to ->, the value in
// data.value. A version Vault soft-deleted (delete_version_after, Kong's
// TTL) has no data and is absent.
type vaultSource struct {
	c     *api.Client
	mount string
	path  string // below the mount, without slashes; "" for the mount's root
	addr  string
}

func newVaultSource(ctx context.Context, s *vault.Storage) (*vaultSource, error) {
	var err error
	v := &vaultSource{}
	for _, f := range []struct {
		name, in string
		out      *string
	}{{"address", s.Address, &v.addr}, {"mount", s.Mount, &v.mount}, {"path_prefix", s.PathPrefix, &v.path}} {
		if *f.out, err = placeholder.Expand(f.name, f.in); err != nil {
			return nil, err
		}
	}
	v.mount, v.path = strings.Trim(v.mount, "/"), strings.Trim(v.path, "/")
	tlsCfg, _, err := s.TLS.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("vault tls: %w", err)
	}
	timeout := 2 * time.Second // lua-resty-acme's default
	if s.Timeout > 0 {
		timeout = time.Duration(s.Timeout)
	}
	v.c, err = api.NewClient(&api.Config{
		Address:    v.addr,
		HttpClient: &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}},
		Timeout:    timeout,
		MaxRetries: 2,
	})
	if err != nil {
		return nil, fmt.Errorf("vault %s: %w", v.addr, err)
	}
	v.c.ClearNamespace() // Kong sets none; api.NewClient reads VAULT_NAMESPACE
	switch s.AuthMethod {
	case "kubernetes":
		if err := v.kubernetesLogin(ctx, s); err != nil {
			return nil, err
		}
	default:
		token, err := placeholder.ExpandSecret("token", s.Token)
		if err != nil {
			return nil, err
		}
		v.c.SetToken(token)
	}
	return v, nil
}

// kubernetesLogin logs in as Kong does: POST auth/<auth_path>/login with
// the role and the service account's JWT.
func (v *vaultSource) kubernetesLogin(ctx context.Context, s *vault.Storage) error {
	jwtPath, mount := "/var/run/secrets/kubernetes.io/serviceaccount/token", "kubernetes"
	role, err := placeholder.Expand("role", s.Role)
	if err != nil {
		return err
	}
	if s.JWTPath != "" {
		if jwtPath, err = placeholder.Expand("jwt_path", s.JWTPath); err != nil {
			return err
		}
	}
	if s.AuthMount != "" {
		if mount, err = placeholder.Expand("auth_mount", s.AuthMount); err != nil {
			return err
		}
	}
	jwt, err := readFileLimited(jwtPath, maxSmallFileSize, "the service account token")
	if err != nil {
		return fmt.Errorf("vault kubernetes login: reading the service account token: %w", err)
	}
	v.c.ClearToken()
	secret, err := v.c.Logical().WriteWithContext(ctx, "auth/"+strings.Trim(mount, "/")+"/login", map[string]any{
		"role": role,
		"jwt":  strings.TrimSpace(string(jwt)),
	})
	if err != nil {
		return fmt.Errorf("vault %s: kubernetes login as role %s: %w", v.addr, role, err)
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return fmt.Errorf("vault %s: kubernetes login as role %s: no token in the answer", v.addr, role)
	}
	v.c.SetToken(secret.Auth.ClientToken)
	return nil
}

func (v *vaultSource) join(kind, key string) string {
	p := v.mount + "/" + kind
	if v.path != "" {
		p += "/" + v.path
	}
	if key != "" {
		p += "/" + key
	}
	return p
}

func (v *vaultSource) where() string {
	return fmt.Sprintf("vault %s, KV v2 %s", v.addr, v.join("data", ""))
}

func (v *vaultSource) describe(key string) string {
	return fmt.Sprintf("vault %s secret %s", v.addr, v.join("data", mangle(key)))
}

func (v *vaultSource) get(ctx context.Context, key string) (string, bool, error) {
	p := v.join("data", mangle(key))
	secret, err := v.c.Logical().ReadWithContext(ctx, p)
	if err != nil {
		return "", false, fmt.Errorf("vault %s: reading %s: %w", v.addr, p, err)
	}
	if secret == nil {
		return "", false, nil
	}
	data, _ := secret.Data["data"].(map[string]any)
	value, ok := data["value"].(string)
	return value, ok, nil // no value: absent, as for Kong
}

func (v *vaultSource) list(ctx context.Context, prefix string) ([]string, error) {
	p := v.join("metadata", "")
	secret, err := v.c.Logical().ListWithContext(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("vault %s: listing %s: %w", v.addr, p, err)
	}
	if secret == nil {
		return nil, nil
	}
	keys, _ := secret.Data["keys"].([]any)
	var out []string
	for _, k := range keys {
		name, _ := k.(string)
		if strings.HasPrefix(name, mangle(prefix)) && !strings.HasSuffix(name, "/") {
			out = append(out, name)
		}
	}
	return out, nil
}

func (v *vaultSource) close() {}
