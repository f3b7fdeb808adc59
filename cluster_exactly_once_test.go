package caddyacme

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestExactlyOnceAcrossNodes is a cluster of three Caddy nodes sharing one
// storage backend and one CA, for every backend: node A in the test
// process, nodes B and C in processes of their own, each with its own
// certificate cache and ports. Fifty names under one allowed wildcard are
// each handshaken on all three nodes at once (150 concurrent handshakes):
// every name is ordered exactly once (counted at the CA, and as cert_obtained
// in the nodes' orders_total metric), every handshake gets a chain that
// verifies against the CA's root and names the host, and all three nodes
// serve the same certificate for a name.
//
// The CA's HTTP-01 validation goes to node C only, as behind a load balancer
// that sends it one node: orders that node A or B started are validated
// through C's acme_challenge handler, which knows their challenges only
// from the shared storage (issue 6, item 2, on every backend).
func TestExactlyOnceAcrossNodes(t *testing.T) {
	const names = 50
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			began := time.Now()
			storage := be.start(t)("exactly-once")

			cPort := testenv.FreePort(t) // node C's HTTP port: where the CA validates
			a := newRig(t, testenv.PebbleOptions{HTTPPort: cPort})
			a.logFile = filepath.Join(t.TempDir(), "node-a.log")
			fields := map[string]any{
				"domains":   []string{"*.once.example.com"},
				"storage":   storage,
				"http_port": cPort,
				// certmagic lets a process place 10 orders per 10s: a node
				// that wins most of the 50 locks needs 40s and more
				"issue_timeout": "150s",
			}
			cfgA, adminA := withAdmin(t, patientHandshakes(t, a.config(a.acme(fields), nil)))
			a.load(cfgA)
			nodes := []*rig{a}
			admins := []string{adminA}
			for _, port := range []int{testenv.FreePort(t), cPort} {
				n := &rig{t: t, pebble: a.pebble, httpPort: port, httpsPort: testenv.FreePort(t), storage: a.storage}
				cfg, admin := withAdmin(t, patientHandshakes(t, n.config(a.acme(fields), nil)))
				startNode(t, cfg)
				nodes = append(nodes, n)
				admins = append(admins, admin)
			}
			// node A's counters are process-wide: count what this test adds
			ordersA := obtainedOrders(t, adminA)
			t.Logf("%s: three nodes up after %s", be.name, time.Since(began).Round(time.Millisecond))

			hosts := make([]string, names)
			for i := range hosts {
				hosts[i] = "n" + strconv.Itoa(i) + ".once.example.com"
			}
			roots := a.pebble.RootPool(t)
			leaves := make([][]*x509.Certificate, len(nodes)) // [node][host]
			errs := make([][]error, len(nodes))
			for i := range nodes {
				leaves[i] = make([]*x509.Certificate, names)
				errs[i] = make([]error, names)
			}
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i, n := range nodes {
				for j, host := range hosts {
					wg.Go(func() {
						<-start
						leaves[i][j], errs[i][j] = verifiedLeaf(n.httpsPort, host, roots, 3*time.Minute)
					})
				}
			}
			issuing := time.Now()
			close(start)
			wg.Wait()
			t.Logf("%s: %d handshakes done in %s", be.name, len(nodes)*names, time.Since(issuing).Round(time.Millisecond))

			failed := 0
			for i := range nodes {
				for j, host := range hosts {
					if err := errs[i][j]; err != nil {
						failed++
						if failed <= 10 {
							t.Errorf("node %c, %s: %v", 'A'+i, host, err)
						}
					}
				}
			}
			if failed > 0 {
				t.Fatalf("%d of %d handshakes failed (the CA received %d orders)\nnode A's warnings and errors:\n%s\npebble log tail:\n%s",
					failed, len(nodes)*names, a.pebble.Orders(), problems(t, a.logFile, 40), tail(a.pebble.Log(), 40))
			}
			for j, host := range hosts {
				if n := a.pebble.OrdersFor(host); n != 1 {
					t.Errorf("%s ordered %d times, want exactly once", host, n)
				}
				for i := 1; i < len(nodes); i++ {
					if !leaves[i][j].Equal(leaves[0][j]) {
						t.Errorf("node %c serves another certificate for %s than node A", 'A'+i, host)
					}
				}
			}
			if n := a.pebble.Orders(); n != names {
				t.Errorf("the CA received %d orders, want %d", n, names)
			}

			// cert_obtained events per node (orders_total{outcome="success"})
			per := []int{obtainedOrders(t, adminA) - ordersA, obtainedOrders(t, admins[1]), obtainedOrders(t, admins[2])}
			t.Logf("%s: orders placed by node A %d, B %d, C %d", be.name, per[0], per[1], per[2])
			if sum := per[0] + per[1] + per[2]; sum != names {
				t.Errorf("the nodes obtained %d certificates in all, want %d", sum, names)
			}
			// the CA validated only at node C: whatever A and B ordered was
			// answered from the shared storage by C's acme_challenge handler
			if per[0]+per[1] == 0 {
				t.Errorf("nodes A and B placed no order: validation through node C for another node's order was not exercised")
			}
			t.Logf("%s: subtest took %s", be.name, time.Since(began).Round(time.Millisecond))
		})
	}
}

// patientHandshakes raises the HTTPS server's read_header_timeout (Caddy's
// default, 1m, also bounds the TLS handshake, and with it how long a
// handshake can wait for issuance) to 3m in a config made by rig.config.
func patientHandshakes(t *testing.T, cfg []byte) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(cfg, &m); err != nil {
		t.Fatal(err)
	}
	servers := m["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
	servers["https"].(map[string]any)["read_header_timeout"] = "3m"
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// verifiedLeaf makes a TLS handshake for name with the HTTPS listener on
// 127.0.0.1:port, within timeout, verifying the chain against roots; it
// returns the leaf, after checking it names exactly name. Unlike
// rig.handshake it is safe for concurrent use and waits longer than an
// order may take.
func verifiedLeaf(port int, name string, roots *x509.CertPool, timeout time.Duration) (*x509.Certificate, error) {
	dialer := &net.Dialer{Timeout: timeout} // bounds the handshake too
	conn, err := tls.DialWithDialer(dialer, "tcp", "127.0.0.1:"+strconv.Itoa(port), &tls.Config{
		ServerName: name,
		RootCAs:    roots,
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	chains := conn.ConnectionState().VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return nil, errors.New("no verified chain")
	}
	leaf := chains[0][0]
	if err := leaf.VerifyHostname(name); err != nil {
		return nil, err
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses) != 1 {
		return nil, fmt.Errorf("leaf has SANs %v %v, want exactly %s", leaf.DNSNames, leaf.IPAddresses, name)
	}
	return leaf, nil
}

// obtainedOrders is the node's caddy_acme_orders_total{outcome="success"},
// read from its admin /metrics (0 before the first order).
func obtainedOrders(t *testing.T, adminBase string) int {
	t.Helper()
	v, _ := testenv.Sample(scrape(t, strings.TrimPrefix(adminBase, "http://")), "caddy_acme_orders_total", map[string]string{"outcome": "success"})
	return int(v)
}

// problems returns the last n warnings and errors of a Caddy JSON log file.
func problems(t *testing.T, file string, n int) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, `"level":"warn"`) || strings.Contains(line, `"level":"error"`) {
			out = append(out, line)
		}
	}
	return tail(strings.Join(out, "\n"), n)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
