package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// VaultVersion is the Vault release these helpers are written and tested
// against (built by InstallCommand: see scripts/install/vault.sh).
const VaultVersion = "v1.14.10"

// VaultRootToken is the root token of every Vault StartVault starts.
const VaultRootToken = "root"

// VaultOptions configures StartVault.
type VaultOptions struct {
	// TLS serves the API over HTTPS only (vault server -dev-tls), with a
	// certificate for 127.0.0.1 and localhost signed by a throwaway CA Vault
	// generates; Vault.CAFile holds that CA.
	TLS bool
}

// Vault is a running Vault dev server: in memory, unsealed, with a KV
// version 2 secrets engine mounted at secret/ and the root token
// VaultRootToken. It is stopped when the test that started it finishes.
type Vault struct {
	// Addr is the API address, http://127.0.0.1:<port> or https://… with
	// VaultOptions.TLS.
	Addr string

	// RootToken is the root token (VaultRootToken).
	RootToken string

	// CAFile is the path of the PEM CA certificate that signed the
	// listener's certificate (VaultOptions.TLS only).
	CAFile string

	// CAPEM is the content of CAFile (VaultOptions.TLS only).
	CAPEM []byte

	proc   *process
	client *http.Client
}

// StartVault starts `vault server -dev` on a free 127.0.0.1 port (and the
// next port, for its cluster listener) and waits until it is unsealed and
// answers. The test is skipped (or, with CI=true, failed) if vault is not
// installed; it fails if the server does not come up. The server is stopped
// in t.Cleanup.
func StartVault(t testing.TB, opts VaultOptions) *Vault {
	t.Helper()
	bin := FindBinary(t, "vault")
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var v *Vault
		v, err = startVault(t, bin, opts)
		if err == nil {
			t.Cleanup(v.Stop)
			return v
		}
		if !errors.Is(err, errPortInUse) {
			break
		}
		t.Logf("testenv: StartVault attempt %d: %v; retrying with other ports", attempt, err)
	}
	t.Fatalf("testenv: StartVault: %v", err)
	return nil
}

func startVault(t testing.TB, bin string, opts VaultOptions) (*Vault, error) {
	port := freePortPair(t)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	v := &Vault{Addr: "http://" + listen, RootToken: VaultRootToken}
	args := []string{
		"server", "-dev",
		"-dev-root-token-id=" + VaultRootToken,
		"-dev-no-store-token",
		"-dev-listen-address=" + listen,
	}
	var certDir string
	if opts.TLS {
		certDir = t.TempDir()
		args = append(args, "-dev-tls", "-dev-tls-cert-dir="+certDir)
		v.Addr = "https://" + listen
		v.CAFile = filepath.Join(certDir, "vault-ca.pem")
	}
	// Vault reads VAULT_* variables (VAULT_ADDR, VAULT_TOKEN, …) from its
	// environment; the developer's must not leak into the test server.
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VAULT_") {
			env = append(env, strings.SplitN(kv, "=", 2)[0]+"=")
		}
	}
	proc, err := startProcess("vault", bin, args, env, &logBuffer{})
	if err != nil {
		return nil, err
	}
	v.proc = proc
	if err := v.waitReady(); err != nil {
		proc.stop()
		return nil, err
	}
	return v, nil
}

// freePortPair returns a port P on 127.0.0.1 such that P and P+1 were both
// free (Vault's dev cluster listener takes P+1).
func freePortPair(t testing.TB) int {
	t.Helper()
	for range 20 {
		p := FreePort(t)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("testenv: no pair of free adjacent ports on 127.0.0.1")
	return 0
}

// waitReady waits until Vault answers its health check as an unsealed,
// active server.
func (v *Vault) waitReady() error {
	const timeout = 60 * time.Second
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		if ok, werr := v.proc.exited(); ok {
			return processFailure(v.proc, "exited during start-up", werr)
		}
		if strings.Contains(v.proc.out.String(), "address already in use") {
			return processFailure(v.proc, "could not bind", errors.New("address already in use"))
		}
		lastErr = v.health()
		if lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return processFailure(v.proc, fmt.Sprintf("did not become ready at %s within %s", v.Addr, timeout), lastErr)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (v *Vault) health() error {
	if v.client == nil {
		tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if v.CAFile != "" {
			pem, err := os.ReadFile(v.CAFile)
			if err != nil {
				return err // not written yet
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("no certificate in %s", v.CAFile)
			}
			tlsCfg.RootCAs = pool
			v.CAPEM = pem
		}
		v.client = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 5 * time.Second}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.Addr+"/v1/sys/health", nil)
	if err != nil {
		return err
	}
	resp, err := v.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("sys/health: %s", resp.Status)
	}
	return nil
}

// HTTPClient returns an HTTP client that trusts the server's certificate.
func (v *Vault) HTTPClient() *http.Client {
	return v.client
}

// Stop stops the server (by PID) and waits until it has exited. Requests
// then fail to connect. It is safe to call more than once.
func (v *Vault) Stop() {
	if v.client != nil {
		v.client.CloseIdleConnections()
	}
	v.proc.stop()
}

// Log returns what the server has written to its stdout and stderr so far.
func (v *Vault) Log() string {
	return v.proc.out.String()
}
