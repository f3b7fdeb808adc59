package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// clients are shared by every Storage with the same settings, across config
// reloads.
var clients = backend.NewPool[*client]()

// Authentication methods.
const (
	authToken      = "token"
	authTokenFile  = "token_file"
	authKubernetes = "kubernetes"
	authAppRole    = "approle"
)

// authSettings are the expanded authentication fields.
type authSettings struct {
	method    string
	token     string
	tokenFile string
	role      string
	jwtPath   string
	mount     string
	roleID    string
	secretID  string
}

// reloginAfterDenied is how long after a login a 403 answer makes the
// client log in again (a revoked token); it bounds the logins a missing
// policy can cause.
const reloginAfterDenied = 5 * time.Second

// client is a Vault API client with its authentication: it logs in (or
// reads its token) on first use, keeps the token renewed in the background
// and logs in again before it expires or after Vault rejects it.
type client struct {
	api    *api.Client // requests with the token
	login  *api.Client // logins, without a token
	http   *http.Client
	auth   authSettings
	logger *zap.Logger

	ctx    context.Context // ended by Destruct
	cancel context.CancelFunc
	wg     sync.WaitGroup // the watch goroutine

	ready atomic.Bool // authenticated once; the token is set

	mu        sync.Mutex // protects lastLogin, watching and sends on fresh; held during a login
	lastLogin time.Time
	watching  bool
	fresh     chan freshAuth // the watch goroutine's next token to watch (latest wins)
}

// freshAuth is a token to watch: a login's secret, or nil for a token
// given as such (looked up to find its TTL).
type freshAuth struct{ secret *api.Secret }

func newClient(cfg clientConfig, logger *zap.Logger) (*client, error) {
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: cfg.timeout, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   cfg.timeout,
		ResponseHeaderTimeout: cfg.timeout,
		TLSClientConfig:       cfg.tlsConfig(),
	}
	hc := &http.Client{
		Transport: transport,
		// as the Vault client's default: it follows redirects itself
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	newAPI := func() (*api.Client, error) {
		c, err := api.NewClient(&api.Config{
			Address:    cfg.address,
			HttpClient: hc,
			// retry 5xx, 412 and connection errors twice, soon: a
			// handshake waits for Load
			MaxRetries:   2,
			MinRetryWait: 100 * time.Millisecond,
			MaxRetryWait: 400 * time.Millisecond,
			// no Timeout: every request has its own context deadline, and
			// a client timeout would cancel WriteRaw's response body
		})
		if err != nil {
			return nil, err
		}
		// drop what NewClient takes from VAULT_TOKEN, VAULT_NAMESPACE and
		// VAULT_HEADERS: the config is the only source
		c.ClearToken()
		h := http.Header{}
		h.Set(api.RequestHeaderName, "true")
		if cfg.namespace != "" {
			h.Set(api.NamespaceHeaderName, cfg.namespace)
		}
		c.SetHeaders(h)
		// and from VAULT_WRAP_TTL: responses are never wrapped
		c.SetWrappingLookupFunc(func(string, string) string { return "" })
		return c, nil
	}
	apiClient, err := newAPI()
	if err != nil {
		return nil, err
	}
	loginClient, err := newAPI()
	if err != nil {
		return nil, err
	}
	c := &client{
		api:    apiClient,
		login:  loginClient,
		http:   hc,
		auth:   cfg.auth,
		logger: logger.Named("vault"),
		fresh:  make(chan freshAuth, 1),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if cfg.auth.method == authToken {
		apiClient.SetToken(cfg.auth.token)
	}
	return c, nil
}

// Destruct stops token renewal; the pool calls it when the last storage
// using the client is cleaned up.
func (c *client) Destruct() error {
	c.cancel()
	c.wg.Wait()
	c.http.CloseIdleConnections()
	return nil
}

// call makes one request (authenticating first if need be) and decodes a
// JSON body into out. A 404 that only says "not found" (no error messages;
// KV's answer for a missing secret or folder) returns status 404 and no
// error, with whatever body Vault sent decoded into out; any other status of
// 400 or more is a *responseError.
func (c *client) call(ctx context.Context, method, path string, params map[string][]string, body []byte, out any) (int, error) {
	if err := c.ensureAuth(ctx); err != nil {
		return 0, err
	}
	resp, err := c.do(ctx, method, path, params, body)
	if resp != nil && resp.Body != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		if re, ok := errors.AsType[*api.ResponseError](err); ok {
			if re.StatusCode == http.StatusNotFound && len(re.Errors) == 0 {
				if out != nil && resp != nil {
					_ = json.NewDecoder(resp.Body).Decode(out)
				}
				return http.StatusNotFound, nil
			}
			return re.StatusCode, &responseError{status: re.StatusCode, errs: re.Errors, err: err}
		}
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w: %w", ctxErr, err)
		}
		return 0, fmt.Errorf("vault: %w", err)
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil && !errors.Is(err, io.EOF) {
			return resp.StatusCode, fmt.Errorf("vault: decoding response: %w", err)
		}
	}
	return resp.StatusCode, nil
}

// do sends one request, and once more after logging in again if Vault
// rejected a token that a new login or a rewritten token file may replace.
func (c *client) do(ctx context.Context, method, path string, params map[string][]string, body []byte) (*api.Response, error) {
	used := c.api.Token()
	resp, err := c.send(ctx, method, path, params, body)
	var re *api.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusForbidden && c.reauth(ctx, used) {
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		resp, err = c.send(ctx, method, path, params, body)
	}
	return resp, err
}

func (c *client) send(ctx context.Context, method, path string, params map[string][]string, body []byte) (*api.Response, error) {
	l := c.api.Logical()
	switch method {
	case http.MethodGet:
		return l.ReadRawWithDataWithContext(ctx, path, params)
	case http.MethodPut:
		return l.WriteRawWithContext(ctx, path, body)
	case http.MethodDelete:
		return l.DeleteRawWithContext(ctx, path)
	default:
		return nil, fmt.Errorf("vault: unsupported method %s", method)
	}
}

// ensureAuth authenticates on first use: sets the token (reading it from
// its file) or logs in, then starts watching the token's lifetime.
func (c *client) ensureAuth(ctx context.Context) error {
	if c.ready.Load() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ready.Load() {
		return nil
	}
	secret, err := c.authenticateLocked(ctx)
	if err != nil {
		return err
	}
	c.ready.Store(true)
	c.watchLocked(secret)
	return nil
}

// authenticateLocked gets a token as the method says and sets it; a login
// returns its secret. c.mu is held.
func (c *client) authenticateLocked(ctx context.Context) (*api.Secret, error) {
	var path string
	var data map[string]any
	switch c.auth.method {
	case authToken:
		c.api.SetToken(c.auth.token)
		return nil, nil
	case authTokenFile:
		b, err := os.ReadFile(c.auth.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("vault auth: reading token_file: %w", err)
		}
		token := strings.TrimSpace(string(b))
		if token == "" {
			return nil, fmt.Errorf("vault auth: token_file %s is empty", c.auth.tokenFile)
		}
		c.api.SetToken(token)
		return nil, nil
	case authKubernetes:
		b, err := os.ReadFile(c.auth.jwtPath)
		if err != nil {
			return nil, fmt.Errorf("vault auth: reading jwt_path: %w", err)
		}
		path = "auth/" + c.auth.mount + "/login"
		data = map[string]any{"role": c.auth.role, "jwt": strings.TrimSpace(string(b))}
	case authAppRole:
		path = "auth/" + c.auth.mount + "/login"
		data = map[string]any{"role_id": c.auth.roleID}
		if c.auth.secretID != "" {
			data["secret_id"] = c.auth.secretID
		}
	default:
		return nil, fmt.Errorf("vault auth: unknown auth_method %q", c.auth.method)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	secret, err := c.login.Logical().WriteWithContext(ctx, path, data)
	if err != nil {
		if re, ok := errors.AsType[*api.ResponseError](err); ok {
			err = &responseError{status: re.StatusCode, errs: re.Errors, err: err}
		}
		return nil, fmt.Errorf("vault auth: %s login at %s: %w", c.auth.method, path, err)
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return nil, fmt.Errorf("vault auth: %s login at %s returned no token", c.auth.method, path)
	}
	c.api.SetToken(secret.Auth.ClientToken)
	c.lastLogin = time.Now()
	c.logger.Info("logged in to vault",
		zap.String("auth_method", c.auth.method),
		zap.Duration("ttl", time.Duration(secret.Auth.LeaseDuration)*time.Second),
		zap.Bool("renewable", secret.Auth.Renewable))
	return secret, nil
}

// timeout is the deadline of a login; requests made through call carry
// their caller's.
func (c *client) timeout() time.Duration {
	if t, ok := c.http.Transport.(*http.Transport); ok && t.ResponseHeaderTimeout > 0 {
		return t.ResponseHeaderTimeout
	}
	return defaultTimeout
}

// reauth replaces a token Vault rejected, if the method can: it logs in
// again (at most once per reloginAfterDenied) or reads the token file again.
// It reports whether the request is worth repeating with the new token.
func (c *client) reauth(ctx context.Context, used string) bool {
	if c.auth.method == authToken {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.api.Token() != used {
		return true // replaced meanwhile
	}
	if c.auth.method != authTokenFile && time.Since(c.lastLogin) < reloginAfterDenied {
		return false
	}
	secret, err := c.authenticateLocked(ctx)
	if err != nil {
		c.logger.Error("authenticating again after vault denied access", zap.Error(err))
		return false
	}
	if c.api.Token() == used {
		return false // the token file still holds the rejected token
	}
	c.watchLocked(secret)
	return true
}

// watchLocked hands a new token to the watch goroutine, starting it on first
// use. c.mu is held.
func (c *client) watchLocked(secret *api.Secret) {
	if c.ctx.Err() != nil {
		return // destructed: an old config's storage still in use
	}
	select {
	case <-c.fresh:
	default:
	}
	c.fresh <- freshAuth{secret: secret}
	if !c.watching {
		c.watching = true
		c.wg.Add(1)
		go c.watch()
	}
}

// watch keeps the current token alive until Destruct: a LifetimeWatcher
// renews a renewable token; when the token cannot be renewed any further,
// login methods log in again and token_file reads the file again.
func (c *client) watch() {
	defer c.wg.Done()
	defer func() {
		if r := recover(); r != nil {
			c.logger.Error("panic watching vault token",
				zap.Any("panic", r),
				zap.ByteString("stack", debug.Stack()))
		}
	}()
	var next *freshAuth
	for {
		if next == nil {
			select {
			case <-c.ctx.Done():
				return
			case f := <-c.fresh:
				next = &f
			}
		}
		secret := next.secret
		next = nil
		if secret == nil {
			secret = c.lookupSelf()
		}
		if secret == nil || secret.Auth == nil || secret.Auth.LeaseDuration <= 0 {
			continue // nothing to renew (a token without TTL); wait for a new one
		}
		w, err := c.api.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: secret})
		if err != nil {
			c.logger.Error("watching vault token", zap.Error(err))
			continue
		}
		go w.Start()
		started := time.Now()
		expired := false
	watching:
		for {
			select {
			case <-c.ctx.Done():
				w.Stop()
				return
			case f := <-c.fresh:
				w.Stop()
				next = &f
				break watching
			case r := <-w.RenewCh():
				if ce := c.logger.Check(zap.DebugLevel, "renewed vault token"); ce != nil {
					var ttl time.Duration
					if r != nil && r.Secret != nil && r.Secret.Auth != nil {
						ttl = time.Duration(r.Secret.Auth.LeaseDuration) * time.Second
					}
					ce.Write(zap.Duration("ttl", ttl))
				}
			case err := <-w.DoneCh():
				if err != nil {
					c.logger.Warn("renewing vault token", zap.Error(err))
				}
				expired = true
				break watching
			}
		}
		if expired {
			if time.Since(started) < time.Second && backend.Wait(c.ctx, time.Second) != nil {
				return // a token that expires at once: do not spin
			}
			next = c.replace()
		}
	}
}

// replace gets a new token for one that is about to expire, retrying with
// backoff until it succeeds or the client is destructed. A token given in
// the config cannot be replaced: it returns nil after a warning.
func (c *client) replace() *freshAuth {
	if c.auth.method == authToken {
		c.logger.Warn("vault token expires soon and cannot be renewed any further; configure a renewable token or another auth_method")
		return nil
	}
	wait := time.Second
	for {
		c.mu.Lock()
		old := c.api.Token()
		secret, err := c.authenticateLocked(c.ctx)
		if err == nil && c.auth.method == authTokenFile && c.api.Token() == old {
			err = fmt.Errorf("token_file %s still holds the expiring token", c.auth.tokenFile)
		}
		c.mu.Unlock()
		if err == nil {
			return &freshAuth{secret: secret}
		}
		c.logger.Error("replacing vault token before it expires", zap.Error(err), zap.Duration("retry_in", wait))
		if backend.Wait(c.ctx, wait) != nil {
			return nil
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// lookupSelf describes the current token (given as such, or read from a
// file) as a login secret, so that a LifetimeWatcher can renew it.
func (c *client) lookupSelf() *api.Secret {
	ctx, cancel := context.WithTimeout(c.ctx, c.timeout())
	defer cancel()
	token := c.api.Token()
	s, err := c.api.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		if c.ctx.Err() == nil {
			c.logger.Warn("looking up vault token; it will not be renewed", zap.Error(redactToken(err, token)))
		}
		return nil
	}
	ttl, err1 := s.TokenTTL()
	renewable, err2 := s.TokenIsRenewable()
	if err := errors.Join(err1, err2); err != nil {
		c.logger.Warn("reading vault token lookup", zap.Error(err))
		return nil
	}
	return &api.Secret{Auth: &api.SecretAuth{
		ClientToken:   token,
		Renewable:     renewable,
		LeaseDuration: int(ttl / time.Second),
	}}
}

// redactToken makes sure a token never appears in an error that is logged.
func redactToken(err error, token string) error {
	if token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), token, "<redacted>"))
}

// responseError is an error answer from Vault: the status and Vault's
// messages, on one line. 401 and 403 match fs.ErrPermission.
type responseError struct {
	status int
	errs   []string
	err    error // the *api.ResponseError
}

func (e *responseError) Error() string {
	msg := strings.Join(e.errs, "; ")
	if msg == "" {
		msg = strings.ToLower(http.StatusText(e.status))
	}
	return fmt.Sprintf("vault responded %d: %s", e.status, msg)
}

func (e *responseError) Unwrap() error { return e.err }

func (e *responseError) Is(target error) bool {
	return target == fs.ErrPermission && (e.status == http.StatusForbidden || e.status == http.StatusUnauthorized)
}
