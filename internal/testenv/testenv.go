// Package testenv starts the real servers of the integration tests: Pebble
// (Let's Encrypt's ACME test server, with pebble-challtestsrv as its DNS),
// Redis (standalone, Cluster, Sentinel, TLS), PostgreSQL, Consul and Vault;
// and reads Prometheus metrics for tests (IndexFamilies, Sample).
//
// Servers are separate binaries installed by scripts/install-test-servers.sh
// into $CADDY_ACME_BIN or $HOME/.cache/caddy-acme/bin. Tests that need a
// binary which is not installed are skipped, except when the environment
// variable CI is "true", where they fail so that a misconfigured CI cannot
// silently pass.
//
// Every server binds to 127.0.0.1 on free ports, so tests can run in
// parallel, and is stopped (by PID) in t.Cleanup.
package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// InstallCommand is the command, relative to the repository root, that
// installs the server binaries the tests need.
const InstallCommand = "scripts/install-test-servers.sh"

// BinDirEnv is the environment variable that overrides the directory the
// server binaries are installed in and looked up from.
const BinDirEnv = "CADDY_ACME_BIN"

// FreePort returns a TCP port on 127.0.0.1 that was free at the time of the
// call. It is picked at random below the kernel's ephemeral port range, so
// that the outgoing connections of tests running in parallel (which take
// ephemeral ports) cannot take it before the caller binds it; another
// FreePort caller still might, rarely, so callers that hand the port to a
// child process should be prepared to retry.
func FreePort(t testing.TB) int {
	t.Helper()
	low := ephemeralLow()
	for range 100 {
		port := freePortFloor + rand.IntN(low-freePortFloor) //nolint:gosec // a test port, not a secret
		if !claimPort(port) {
			continue // handed out before in this process
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		if err := l.Close(); err != nil {
			t.Fatalf("testenv: closing probe listener: %v", err)
		}
		return port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: finding a free port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatalf("testenv: closing probe listener: %v", err)
	}
	return port
}

// claimed holds the ports FreePort returned in this process, so that two
// calls never return the same one.
var claimed struct {
	sync.Mutex // protects ports
	ports      map[int]bool
}

// claimPort records port as handed out, and reports whether it was not yet.
func claimPort(port int) bool {
	claimed.Lock()
	defer claimed.Unlock()
	if claimed.ports[port] {
		return false
	}
	if claimed.ports == nil {
		claimed.ports = make(map[int]bool)
	}
	claimed.ports[port] = true
	return true
}

// freePortFloor is the lowest port FreePort picks (well above the
// well-known and most registered service ports).
const freePortFloor = 11000

// ephemeralLow returns the start of the kernel's ephemeral port range
// (/proc/sys/net/ipv4/ip_local_port_range), or 32768.
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if fields := strings.Fields(string(data)); len(fields) == 2 {
			if n, err := strconv.Atoi(fields[0]); err == nil && n > freePortFloor+1000 {
				return n
			}
		}
	}
	return 32768
}

// BinDirs returns the directories searched for server binaries, in order:
// $CADDY_ACME_BIN (if set) and $HOME/.cache/caddy-acme/bin. $PATH is searched
// after these.
func BinDirs() []string {
	var dirs []string
	if d := os.Getenv(BinDirEnv); d != "" {
		dirs = append(dirs, d)
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		dirs = append(dirs, filepath.Join(home, ".cache", "caddy-acme", "bin"))
	}
	return dirs
}

// LookupBinary returns the path of the executable name, searching BinDirs
// and then $PATH. It returns an error if name is found nowhere.
func LookupBinary(name string) (string, error) {
	for _, dir := range BinDirs() {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in %s or $PATH", name, strings.Join(BinDirs(), ", "))
}

// FindBinary returns the path of the server executable name (see
// LookupBinary). If it is not installed, the test is skipped with a hint to
// run InstallCommand, or failed when the environment variable CI is "true".
func FindBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := LookupBinary(name)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("testenv: %v; install it with %s (from the repository root)", err, InstallCommand)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
		return ""
	}
	t.Skip(msg)
	return ""
}

// logBuffer is a goroutine-safe io.Writer collecting a process's output. If
// onLine is set it is called (with the lock held) for every complete line.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte
	onLine  func(line string)
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.onLine == nil {
		return len(p), nil
	}
	b.partial = append(b.partial, p...)
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			break
		}
		b.onLine(string(b.partial[:i]))
		b.partial = b.partial[i+1:]
	}
	return len(p), nil
}

// String returns everything written so far.
func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail returns at most the last n lines written so far.
func (b *logBuffer) tail(n int) string {
	s := strings.TrimRight(b.String(), "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// process is a server child process whose output goes to a logBuffer.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *logBuffer
	done chan struct{} // closed once the process has been reaped
	err  error         // cmd.Wait's result, valid after done is closed

	stopOnce sync.Once
}

// startProcess starts bin with args and extra environment variables (added
// to the test process's environment), capturing stdout and stderr into out.
func startProcess(name, bin string, args, env []string, out *logBuffer) (*process, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.Stdin = nil
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// cpuTime is the user and system CPU time the running process has used,
// from /proc/<pid>/stat (Linux; clock ticks of 1/100 s, as on every Linux
// this runs on).
func (p *process) cpuTime() (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("%s CPU time: %w", p.name, err)
	}
	// the fields after the command name, which is in parentheses
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s CPU time: unexpected /proc stat %q", p.name, data)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("%s CPU time: unexpected /proc stat %q", p.name, data)
	}
	var ticks int64
	for _, f := range fields[11:13] { // utime, stime: fields 14 and 15 of stat
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s CPU time: %w", p.name, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100), nil
}

// exited reports whether the process has already terminated, with its exit
// error.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM to the process (by PID), kills it if it has not exited
// after a grace period, and waits until it has been reaped. It is safe to
// call more than once.
func (p *process) stop() {
	p.stopOnce.Do(func() {
		if ok, _ := p.exited(); ok {
			return
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			_ = p.cmd.Process.Kill()
		}
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}
