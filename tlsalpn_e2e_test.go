package caddyacme

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestTLSALPNAcrossNodes is a three-node cluster sharing one Redis storage,
// with HTTP-01 disabled: the CA validates with TLS-ALPN-01 and connects to
// node C only (as a load balancer on port 443 might send it), while the
// handshakes that start the orders go to nodes A and B. Node C never
// orders, so it knows the challenges only from the shared storage, and
// answers them with the acme_tls_alpn listener wrapper. Without the
// wrapper on node C, validation fails.
func TestTLSALPNAcrossNodes(t *testing.T) {
	t.Run("wrapper on every node", func(t *testing.T) {
		a, b, _ := tlsALPNCluster(t, true)
		names := []string{"one.alpn.example.com", "two.alpn.example.com", "three.alpn.example.com", "four.alpn.example.com"}
		roots := a.pebble.RootPool(t)
		type served struct {
			node, name string
			leaf       []byte
			err        error
		}
		results := make(chan served, 2*len(names))
		var wg sync.WaitGroup
		for _, name := range names {
			for node, port := range map[string]int{"A": a.httpsPort, "B": b.httpsPort} {
				wg.Go(func() {
					chain, err := verifiedHandshake(port, name, roots, 45*time.Second)
					s := served{node: node, name: name, err: err}
					if err == nil {
						checkLeaf(t, chain[0], name)
						s.leaf = chain[0].Raw
					}
					results <- s
				})
			}
		}
		wg.Wait()
		close(results)
		leaves := map[string]map[string][]byte{} // name → node → leaf
		for s := range results {
			if s.err != nil {
				t.Fatalf("handshake with node %s for %s: %v\npebble log:\n%s", s.node, s.name, s.err, tail(a.pebble.Log(), 40))
			}
			if leaves[s.name] == nil {
				leaves[s.name] = map[string][]byte{}
			}
			leaves[s.name][s.node] = s.leaf
		}
		for _, name := range names {
			if n := a.pebble.OrdersFor(name); n != 1 {
				t.Errorf("orders for %s = %d, want 1", name, n)
			}
			if string(leaves[name]["A"]) != string(leaves[name]["B"]) {
				t.Errorf("nodes A and B serve different certificates for %s", name)
			}
		}
		if n := a.pebble.Orders(); n != len(names) {
			t.Errorf("orders = %d, want %d", n, len(names))
		}
	})

	t.Run("no wrapper on the node the CA reaches", func(t *testing.T) {
		a, _, c := tlsALPNCluster(t, false)
		const name = "lost.alpn.example.com"
		_, err := verifiedHandshake(a.httpsPort, name, a.pebble.RootPool(t), 45*time.Second)
		if err == nil {
			t.Fatalf("handshake for %s succeeded, want the order to fail (nobody on node C answers tls-alpn-01)", name)
		}
		if n := a.pebble.OrdersFor(name); n != 1 {
			t.Fatalf("orders for %s = %d, want 1 (failed)", name, n)
		}
		logs, err := os.ReadFile(a.logFile)
		if err != nil {
			t.Fatal(err)
		}
		var problem string
		for _, line := range strings.Split(string(logs), "\n") {
			if strings.Contains(line, `"challenge_type":"tls-alpn-01"`) && strings.Contains(line, `"problem"`) {
				problem = line
				break
			}
		}
		if problem == "" {
			t.Fatalf("node A logged no CA problem for the tls-alpn-01 challenge:\n%s", tail(string(logs), 40))
		}
		// Pebble: "Failed to connect to 127.0.0.1:<port> for the tls-alpn-01
		// challenge" (its TLS handshake with node C failed)
		if !strings.Contains(problem, "for the tls-alpn-01 challenge") {
			t.Fatalf("the CA's problem does not name the tls-alpn-01 validation: %s", problem)
		}
		// the CA did reach node C, whose TLS app had no answer
		if out := c.stderr.String(); !strings.Contains(out, "no information found to solve challenge for identifier: "+name) {
			t.Fatalf("node C did not log its missing tls-alpn-01 answer for %s:\n%s", name, tail(out, 20))
		}
		t.Logf("the CA's problem without the wrapper: %s", problem)
	})
}

// tlsALPNCluster starts Pebble (TLS-ALPN-01 validation to node C's HTTPS
// port), Redis, node A in this process and nodes B and C as child
// processes, all with HTTP-01 disabled and one Redis storage. Nodes A and
// B have the acme_tls_alpn wrapper; node C has it if wrapC.
func tlsALPNCluster(t *testing.T, wrapC bool) (a, b *rig, c *testNode) {
	t.Helper()
	redis := testenv.StartRedis(t, testenv.RedisOptions{})
	cPort := testenv.FreePort(t)
	a = newRig(t, testenv.PebbleOptions{TLSPort: cPort})
	a.logFile = filepath.Join(t.TempDir(), "node-a.log")
	b = &rig{t: t, pebble: a.pebble, httpPort: testenv.FreePort(t), httpsPort: testenv.FreePort(t), storage: t.TempDir()}
	cRig := &rig{t: t, pebble: a.pebble, httpPort: testenv.FreePort(t), httpsPort: cPort, storage: t.TempDir()}
	app := a.acme(map[string]any{
		"domains": []string{"*.alpn.example.com"},
		"storage": redisStorage(redis, "tlsalpn"),
		"challenges": map[string]any{
			"http": map[string]any{"disabled": true},
			// node C's HTTPS port: certmagic's own solver finds it taken
			// and binds nothing
			"tls-alpn": map[string]any{"alternate_port": cPort},
		},
	})
	cCfg := cRig.config(app, nil)
	if wrapC {
		cCfg = withListenerWrappers(t, cCfg)
	}
	c = startNode(t, cCfg)
	startNode(t, withListenerWrappers(t, b.config(app, nil)))
	a.load(withListenerWrappers(t, a.config(app, nil)))
	return a, b, c
}

// withListenerWrappers puts the acme_tls_alpn wrapper before the tls
// placeholder in the listener wrappers of the rig config's HTTPS server.
func withListenerWrappers(t *testing.T, cfg []byte) []byte {
	t.Helper()
	var whole map[string]any
	if err := json.Unmarshal(cfg, &whole); err != nil {
		t.Fatal(err)
	}
	https := whole["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["https"].(map[string]any)
	https["listener_wrappers"] = []any{
		map[string]any{"wrapper": "acme_tls_alpn"},
		map[string]any{"wrapper": "tls"},
	}
	out, err := json.Marshal(whole)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
