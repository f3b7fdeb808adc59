package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// consulDo sends one request to a Consul agent and returns status and body.
func consulDo(t *testing.T, client *http.Client, method, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestStartConsul(t *testing.T) {
	t.Parallel()
	c := StartConsul(t, ConsulOptions{HCL: []string{`limits { kv_max_value_size = 1048576 }`}})
	client := &http.Client{Timeout: 10 * time.Second}
	if code, body := consulDo(t, client, http.MethodPut, "http://"+c.Addr+"/v1/kv/x", "", strings.Repeat("v", 600<<10)); code != 200 {
		t.Fatalf("PUT of 600 KiB with kv_max_value_size raised: %d %s", code, body)
	}
	if code, body := consulDo(t, client, http.MethodGet, "http://"+c.Addr+"/v1/kv/testenv-consul-probe", "", ""); code != 404 {
		t.Fatalf("probe key left behind: %d %s", code, body)
	}
	if c.HTTPSAddr != "" || c.CAFile != "" || c.Token != "" {
		t.Fatalf("TLS or ACL set up without being asked: %+v", c)
	}
	c.Stop()
	c.Stop() // idempotent
	if _, err := client.Get("http://" + c.Addr + "/v1/status/leader"); err == nil {
		t.Fatal("agent still answers after Stop")
	}
}

func TestStartConsulACL(t *testing.T) {
	t.Parallel()
	c := StartConsul(t, ConsulOptions{ACLToken: "testenv-root-token"})
	client := &http.Client{Timeout: 10 * time.Second}
	if code, _ := consulDo(t, client, http.MethodPut, "http://"+c.Addr+"/v1/kv/x", "", "v"); code != 403 {
		t.Fatalf("anonymous PUT: %d, want 403", code)
	}
	if code, body := consulDo(t, client, http.MethodPut, "http://"+c.Addr+"/v1/kv/x", c.Token, "v"); code != 200 {
		t.Fatalf("PUT with the management token: %d %s", code, body)
	}
}

func TestStartConsulTLS(t *testing.T) {
	t.Parallel()
	c := StartConsul(t, ConsulOptions{TLSClientAuth: true})
	if c.HTTPSAddr == "" || c.CAFile == "" || c.ClientCertFile == "" || c.ClientKeyFile == "" {
		t.Fatalf("TLS fields not set: %+v", c)
	}
	client := c.HTTPClient(t)
	if code, body := consulDo(t, client, http.MethodPut, "https://"+c.HTTPSAddr+"/v1/kv/x", "", "v"); code != 200 {
		t.Fatalf("PUT over TLS: %d %s", code, body)
	}
	// Without a client certificate the agent refuses the connection.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	anon := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if resp, err := anon.Get("https://" + c.HTTPSAddr + "/v1/kv/x"); err == nil {
		resp.Body.Close()
		t.Fatalf("request without a client certificate: %s, want a TLS error", resp.Status)
	}
	// The plain listener stays available.
	if code, body := consulDo(t, &http.Client{Timeout: 10 * time.Second}, http.MethodGet, "http://"+c.Addr+"/v1/kv/x?raw", "", ""); code != 200 || body != "v" {
		t.Fatalf("GET over plain HTTP: %d %q", code, body)
	}
}
