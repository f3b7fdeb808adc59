package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ConsulVersion is the Consul release these helpers are written and tested
// against (built by InstallCommand: the last MPL-2.0 release).
const ConsulVersion = "v1.15.4"

// ConsulOptions configures StartConsul.
type ConsulOptions struct {
	// ACLToken, if set, enables ACLs with default policy "deny" and makes
	// ACLToken the initial management token (and the agent's token), so a
	// client needs it (or a token created with it) for everything.
	ACLToken string

	// TLS adds an HTTPS listener (Consul.HTTPSAddr) whose certificate, for
	// 127.0.0.1 and localhost, is signed by a throwaway CA (Consul.CAFile).
	// The plain HTTP listener stays available.
	TLS bool

	// TLSClientAuth makes the HTTPS listener require a client certificate
	// signed by the CA (Consul.ClientCertFile, Consul.ClientKeyFile).
	// Implies TLS.
	TLSClientAuth bool

	// HCL is extra agent configuration, one HCL snippet per element, e.g.
	// `limits { kv_max_value_size = 2097152 }`.
	HCL []string
}

// Consul is a running Consul dev agent (a single server with an in-memory
// store), bound to 127.0.0.1 on free ports, with DNS and gRPC disabled. It
// is stopped when the test that started it finishes.
type Consul struct {
	// Addr is the host:port of the plain HTTP API.
	Addr string

	// HTTPSAddr is the host:port of the HTTPS API, "" unless TLS was asked
	// for.
	HTTPSAddr string

	// CAFile is the PEM file of the CA that signed the HTTPS listener's
	// and the client's certificates ("" without TLS); CAPEM is its content.
	CAFile string
	CAPEM  []byte

	// ClientCertFile and ClientKeyFile are a client certificate and key
	// signed by the CA ("" without TLS).
	ClientCertFile string
	ClientKeyFile  string

	// Token is ConsulOptions.ACLToken.
	Token string

	// ConfigFile is the agent's HCL configuration file.
	ConfigFile string

	proc *process
}

// StartConsul starts a Consul dev agent on free 127.0.0.1 ports and waits
// until its KV store accepts writes. The test is skipped (or, with CI=true,
// failed) if the consul binary is not installed; it fails if the agent does
// not come up. The agent is stopped (by PID) in t.Cleanup.
func StartConsul(t testing.TB, opts ConsulOptions) *Consul {
	t.Helper()
	bin := FindBinary(t, "consul")
	if opts.TLSClientAuth {
		opts.TLS = true
	}
	dir := t.TempDir()
	c := &Consul{Token: opts.ACLToken}
	if opts.TLS {
		if err := c.writeTLSFiles(dir); err != nil {
			t.Fatalf("testenv: StartConsul: %v", err)
		}
	}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		err = c.start(t, bin, dir, opts)
		if err == nil || !errors.Is(err, errPortInUse) {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: StartConsul: %v", err)
	}
	t.Cleanup(c.proc.stop)
	return c
}

// start is one attempt at starting the agent on fresh ports. On failure it
// stops whatever it started.
func (c *Consul) start(t testing.TB, bin, dir string, opts ConsulOptions) (err error) {
	httpPort, serverPort := FreePort(t), FreePort(t)
	serfLAN, serfWAN := FreePort(t), FreePort(t)
	httpsPort := -1
	c.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	c.HTTPSAddr = ""
	if opts.TLS {
		httpsPort = FreePort(t)
		c.HTTPSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(httpsPort))
	}

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "ports {\n  http = %d\n  https = %d\n  dns = -1\n  grpc = -1\n  grpc_tls = -1\n  server = %d\n  serf_lan = %d\n  serf_wan = %d\n}\n",
		httpPort, httpsPort, serverPort, serfLAN, serfWAN)
	if opts.ACLToken != "" {
		fmt.Fprintf(&cfg, "acl {\n  enabled = true\n  default_policy = \"deny\"\n  tokens {\n    initial_management = %q\n    agent = %q\n  }\n}\n",
			opts.ACLToken, opts.ACLToken)
	}
	if opts.TLS {
		fmt.Fprintf(&cfg, "tls {\n  defaults {\n    ca_file = %q\n    cert_file = %q\n    key_file = %q\n    verify_incoming = false\n    verify_outgoing = false\n  }\n  https {\n    verify_incoming = %t\n  }\n}\n",
			c.CAFile, filepath.Join(dir, "consul-server-cert.pem"), filepath.Join(dir, "consul-server-key.pem"), opts.TLSClientAuth)
	}
	for _, h := range opts.HCL {
		cfg.WriteString(h)
		cfg.WriteString("\n")
	}
	c.ConfigFile = filepath.Join(dir, "consul.hcl")
	if err := os.WriteFile(c.ConfigFile, []byte(cfg.String()), 0o600); err != nil {
		return err
	}
	dataDir := filepath.Join(dir, "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}

	out := &logBuffer{}
	proc, err := startProcess("consul", bin, []string{
		"agent", "-dev",
		"-bind", "127.0.0.1",
		"-client", "127.0.0.1",
		"-data-dir", dataDir,
		"-config-file", c.ConfigFile,
		"-log-level", "warn",
	}, []string{"CONSUL_HTTP_ADDR=", "CONSUL_HTTP_TOKEN=", "CHECKPOINT_DISABLE=1"}, out)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			proc.stop()
		}
	}()
	if err := c.waitReady(proc); err != nil {
		return err
	}
	c.proc = proc
	return nil
}

// waitReady waits until a KV write through the plain HTTP API succeeds
// (the agent has elected itself leader and, with ACLs, bootstrapped them),
// then removes the probe key.
func (c *Consul) waitReady(proc *process) error {
	const timeout = 60 * time.Second
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	probe := "http://" + c.Addr + "/v1/kv/testenv-consul-probe"
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		if ok, werr := proc.exited(); ok {
			return processFailure(proc, "exited during start-up", werr)
		}
		lastErr = c.request(client, http.MethodPut, probe, "ready")
		if lastErr == nil {
			if err := c.request(client, http.MethodDelete, probe, ""); err != nil {
				return processFailure(proc, "could not delete the probe key", err)
			}
			return nil
		}
		if strings.Contains(proc.out.String(), "address already in use") {
			return processFailure(proc, "could not bind", lastErr)
		}
		if time.Now().After(deadline) {
			return processFailure(proc, fmt.Sprintf("did not accept a KV write at %s within %s", c.Addr, timeout), lastErr)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// request sends one request with the ACL token and wants a 200.
func (c *Consul) request(client *http.Client, method, url, body string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	if c.Token != "" {
		req.Header.Set("X-Consul-Token", c.Token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

// Log returns the agent's output so far (warnings and errors only).
func (c *Consul) Log() string {
	return c.proc.out.String()
}

// Stop stops the agent now (it is also stopped at the end of the test),
// e.g. to check how a client reports an unreachable server.
func (c *Consul) Stop() {
	c.proc.stop()
}

// HTTPClient returns a client for the HTTPS API that trusts the CA and
// presents the client certificate; nil without TLS.
func (c *Consul) HTTPClient(t testing.TB) *http.Client {
	t.Helper()
	if c.CAFile == "" {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	cert, err := tls.LoadX509KeyPair(c.ClientCertFile, c.ClientKeyFile)
	if err != nil {
		t.Fatalf("testenv: loading Consul client certificate: %v", err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// writeTLSFiles creates a throwaway CA, a server certificate for
// 127.0.0.1, ::1, localhost and server.dc1.consul, and a client
// certificate, and writes them (PEM) to dir.
func (c *Consul) writeTLSFiles(dir string) error {
	ca, err := newTestCA("caddy-acme testenv Consul CA")
	if err != nil {
		return err
	}
	if err := ca.issueFiles(dir, "consul-server", "server.dc1.consul", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		[]string{"localhost", "server.dc1.consul"}, []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback}); err != nil {
		return err
	}
	if err := ca.issueFiles(dir, "consul-client", "caddy-acme test client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil); err != nil {
		return err
	}
	c.CAPEM = ca.certPEM()
	c.CAFile = filepath.Join(dir, "consul-ca.pem")
	c.ClientCertFile = filepath.Join(dir, "consul-client-cert.pem")
	c.ClientKeyFile = filepath.Join(dir, "consul-client-key.pem")
	return os.WriteFile(c.CAFile, c.CAPEM, 0o600)
}
