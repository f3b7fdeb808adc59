package caddyacme

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// nodeConfigEnv, when set, makes the test binary run as another Caddy node:
// it loads the config file it names, prints nodeReady, and runs until its
// standard input closes. cliEnv makes it the caddy command.
const (
	nodeConfigEnv = "CADDY_ACME_TEST_NODE_CONFIG"
	nodeReady     = "caddy-acme test node ready"
	cliEnv        = "CADDY_ACME_TEST_CADDY_CLI"
)

func TestMain(m *testing.M) {
	if file := os.Getenv(nodeConfigEnv); file != "" {
		os.Exit(runNode(file))
	}
	if os.Getenv(cliEnv) != "" {
		caddycmd.Main()
		return
	}
	os.Exit(m.Run())
}

func runNode(file string) int {
	cfg, err := os.ReadFile(file)
	if err == nil {
		err = caddy.Load(cfg, true)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 1
	}
	fmt.Println(nodeReady)
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := caddy.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "node: stopping:", err)
		return 1
	}
	return 0
}

// testNode is a Caddy node running in another process (startNode).
type testNode struct {
	cmd    *exec.Cmd
	stderr *syncBuffer

	waitOnce sync.Once
	waitErr  error // cmd.Wait's result, once wait returned
}

// wait waits (once, for every caller) until the process has exited.
func (n *testNode) wait() error {
	n.waitOnce.Do(func() { n.waitErr = n.cmd.Wait() })
	return n.waitErr
}

// pid is the node's process ID.
func (n *testNode) pid() int { return n.cmd.Process.Pid }

// kill kills the node with SIGKILL, as a crash would end it (no Caddy
// shutdown, no lock released), and waits until it is gone.
func (n *testNode) kill(t *testing.T) {
	t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("killing node (pid %d): %v", n.pid(), err)
	}
	_ = n.wait()
}

// startNode runs cfg in another process (this test binary re-executed) and
// stops it when the test ends.
func startNode(t *testing.T, cfg []byte) *testNode {
	t.Helper()
	file := filepath.Join(t.TempDir(), "node.json")
	if err := os.WriteFile(file, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), nodeConfigEnv+"="+file)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n := &testNode{cmd: cmd, stderr: new(syncBuffer)}
	cmd.Stderr = n.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() {
			_ = n.wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("node output:\n%s", n.stderr.String())
		}
	})

	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == nodeReady {
				ready <- true
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("node exited before it was ready:\n%s", n.stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("node not ready after 60s:\n%s", n.stderr.String())
	}
	return n
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex // protects buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestChallengeForAnotherNode is a two-node cluster sharing one storage, as
// behind a load balancer that sends the CA's HTTP-01 requests to node A
// only. Node B (another process) orders a certificate; the CA validates
// against node A, which knows the challenge only from the shared storage and
// answers it with the acme_challenge handler. Node A then serves node B's
// certificate from storage without ordering again.
func TestChallengeForAnotherNode(t *testing.T) {
	a := newRig(t, testenv.PebbleOptions{})
	fields := map[string]any{"domains": []string{"*.cluster.example.com"}}
	a.load(a.config(a.acme(fields), nil))

	b := &rig{t: t, pebble: a.pebble, httpPort: testenv.FreePort(t), httpsPort: testenv.FreePort(t), storage: a.storage}
	startNode(t, b.config(a.acme(fields), nil)) // a.acme: the CA's HTTP-01 port is node A's

	chain := b.mustHandshake("b.cluster.example.com")
	if n, nb := a.pebble.Orders(), a.pebble.OrdersFor("b.cluster.example.com"); n != 1 || nb != 1 {
		t.Fatalf("orders = %d, for b.cluster.example.com %d; want 1 and 1", n, nb)
	}

	fromA := a.mustHandshake("b.cluster.example.com")
	if !fromA[0].Equal(chain[0]) {
		t.Fatal("node A serves another certificate than node B obtained")
	}
	if n := a.pebble.Orders(); n != 1 {
		t.Fatalf("orders after node A's handshake = %d, want still 1", n)
	}
}
