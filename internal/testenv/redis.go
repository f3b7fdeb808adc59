package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// RedisServerName is the DNS name in the certificate of a Redis started with
// RedisOptions.TLS (besides the IP address 127.0.0.1), so tests can check
// that a client verifies a server name other than the address it dials.
const RedisServerName = "redis.test"

// RedisOptions configures StartRedis.
type RedisOptions struct {
	// Password is the password of Redis's default user (requirepass).
	// Empty: the default user needs no password, unless ACLUser is set.
	Password string

	// ACLUser and ACLPass, if ACLUser is set, create an ACL user with every
	// permission (~* &* +@all). The default user is then switched off
	// unless Password is set too, so only ACLUser can log in.
	ACLUser, ACLPass string

	// TLS makes Redis accept only TLS connections (no plain-text port),
	// with a certificate for RedisServerName and 127.0.0.1 issued by a
	// throwaway CA (Redis.CAPEM, Redis.CAFile).
	TLS bool

	// TLSClientAuth, with TLS, makes Redis require a client certificate
	// issued by the same CA (Redis.ClientCertFile, Redis.ClientKeyFile).
	TLSClientAuth bool

	// AppendOnly turns on the append-only file, so that data survives
	// Restart.
	AppendOnly bool
}

// Redis is a running redis-server on 127.0.0.1, stopped (by PID) when the
// test that started it finishes.
type Redis struct {
	// Addr is host:port of the server (its TLS port with RedisOptions.TLS).
	Addr string

	// Dir is the server's working directory (configuration, data, and
	// with TLS the certificate files).
	Dir string

	// Options are the options the server was started with.
	Options RedisOptions

	// CAPEM and CAFile hold the throwaway CA that issued the server
	// certificate (and the client certificate), with RedisOptions.TLS.
	CAPEM  []byte
	CAFile string

	// ClientCertFile and ClientKeyFile are a client certificate and its key
	// issued by the CA, with RedisOptions.TLS.
	ClientCertFile, ClientKeyFile string

	bin  string
	conf string
	proc *process
}

// StartRedis starts a redis-server on a free 127.0.0.1 port and waits until
// it accepts connections. Persistence is off unless opts.AppendOnly. The
// test is skipped (or, with CI=true, failed) if redis-server is not
// installed.
func StartRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	if opts.TLSClientAuth && !opts.TLS {
		t.Fatal("testenv: StartRedis: TLSClientAuth needs TLS")
	}
	bin := FindBinary(t, "redis-server")
	r := &Redis{Dir: t.TempDir(), Options: opts, bin: bin}
	if opts.TLS {
		if err := r.writeTLSFiles(); err != nil {
			t.Fatalf("testenv: StartRedis: %v", err)
		}
	}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		port := FreePort(t)
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err = r.writeConfig(port, nil); err != nil {
			break
		}
		err = r.start()
		if err == nil || !errors.Is(err, errPortInUse) {
			break
		}
		t.Logf("testenv: StartRedis attempt %d: %v; retrying on another port", attempt, err)
	}
	if err != nil {
		t.Fatalf("testenv: StartRedis: %v", err)
	}
	t.Cleanup(r.Stop)
	return r
}

// writeConfig writes the server's configuration file for port, plus extra
// configuration lines.
func (r *Redis) writeConfig(port int, extra []string) error {
	lines := []string{
		"bind 127.0.0.1",
		"protected-mode no",
		"daemonize no",
		`logfile ""`,
		"dir " + redisQuote(r.Dir),
		`save ""`,
		"repl-diskless-sync-delay 0",
	}
	if r.Options.AppendOnly {
		lines = append(lines, "appendonly yes", "appendfsync always")
	} else {
		lines = append(lines, "appendonly no")
	}
	if r.Options.TLS {
		lines = append(lines,
			"port 0",
			"tls-port "+strconv.Itoa(port),
			"tls-cert-file "+redisQuote(filepath.Join(r.Dir, "server-cert.pem")),
			"tls-key-file "+redisQuote(filepath.Join(r.Dir, "server-key.pem")),
			"tls-ca-cert-file "+redisQuote(r.CAFile),
			"tls-replication yes",
			"tls-cluster yes",
		)
		if r.Options.TLSClientAuth {
			lines = append(lines, "tls-auth-clients yes")
		} else {
			lines = append(lines, "tls-auth-clients no")
		}
	} else {
		lines = append(lines, "port "+strconv.Itoa(port))
	}
	if r.Options.Password != "" {
		lines = append(lines, "requirepass "+redisQuote(r.Options.Password))
	}
	if r.Options.ACLUser != "" {
		lines = append(lines, fmt.Sprintf("user %s on %s ~* &* +@all", r.Options.ACLUser, redisQuote(">"+r.Options.ACLPass)))
		if r.Options.Password == "" {
			lines = append(lines, "user default off")
		}
	}
	lines = append(lines, extra...)
	r.conf = filepath.Join(r.Dir, "redis.conf")
	return os.WriteFile(r.conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// redisQuote quotes s for a redis.conf line.
func redisQuote(s string) string {
	return strconv.Quote(s)
}

// start starts the server with r.conf and waits until it is ready.
func (r *Redis) start() error {
	proc, err := startRedisProcess("redis-server", r.bin, r.conf)
	if err != nil {
		return err
	}
	r.proc = proc
	return nil
}

// startRedisProcess starts a redis-server (or redis-sentinel) with the
// configuration file conf and waits until it is ready: for the line "Ready to
// accept connections" (a server) or "+monitor master" (a Sentinel, which
// listens before it logs that). On failure the process is stopped.
func startRedisProcess(name, bin, conf string) (*process, error) {
	readyLine := "Ready to accept connections"
	if name == "redis-sentinel" {
		readyLine = "+monitor master"
	}
	ready := make(chan struct{})
	out := &logBuffer{}
	out.onLine = func(line string) {
		if strings.Contains(line, readyLine) {
			select {
			case <-ready:
			default:
				close(ready)
			}
		}
	}
	proc, err := startProcess(name, bin, []string{conf}, nil, out)
	if err != nil {
		return nil, err
	}
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	select {
	case <-ready:
		return proc, nil
	case <-proc.done:
		err := processFailure(proc, "exited during start-up", proc.err)
		// Redis writes "Address already in use", which processFailure
		// does not recognise.
		if strings.Contains(strings.ToLower(out.String()), "address already in use") && !errors.Is(err, errPortInUse) {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return nil, err
	case <-timeout.C:
		proc.stop()
		return nil, processFailure(proc, "was not ready in 30s", errors.New("timeout"))
	}
}

// Stop stops the server (by PID) and waits until it has exited. It is safe
// to call more than once.
func (r *Redis) Stop() {
	if r.proc != nil {
		r.proc.stop()
	}
}

// Restart stops the server and starts it again on the same port, with the
// same data directory (data survives with RedisOptions.AppendOnly).
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	r.Stop()
	if err := r.start(); err != nil {
		t.Fatalf("testenv: restarting redis: %v", err)
	}
}

// Start starts the server again after Stop, on the same port and with the
// same data directory (data survives with RedisOptions.AppendOnly), and
// waits until it accepts connections, so that a test can keep the server
// down for a while (Restart does both at once). The server is stopped when
// the test finishes, as after StartRedis. It fails the test if the server
// is running or does not come up.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	if r.proc != nil {
		if exited, _ := r.proc.exited(); !exited {
			t.Fatalf("testenv: starting redis %s: it is running; Stop it first", r.Addr)
		}
	}
	if err := r.start(); err != nil {
		t.Fatalf("testenv: starting redis %s again: %v", r.Addr, err)
	}
}

// Log returns the server's output so far.
func (r *Redis) Log() string {
	if r.proc == nil {
		return ""
	}
	return r.proc.out.String()
}

// TLSConfig returns a client TLS configuration that trusts CAPEM (and, with
// RedisOptions.TLSClientAuth, presents the client certificate), or nil
// without RedisOptions.TLS.
func (r *Redis) TLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	if !r.Options.TLS {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.CAPEM)
	cfg := &tls.Config{RootCAs: pool, ServerName: RedisServerName, MinVersion: tls.VersionTLS12}
	if r.Options.TLSClientAuth {
		cert, err := tls.LoadX509KeyPair(r.ClientCertFile, r.ClientKeyFile)
		if err != nil {
			t.Fatalf("testenv: loading redis client certificate: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// Client returns a go-redis client of the server with the credentials it
// was started with, closed when the test finishes.
func (r *Redis) Client(t testing.TB) *goredis.Client {
	t.Helper()
	opts := &goredis.Options{Addr: r.Addr, TLSConfig: r.TLSConfig(t)}
	switch {
	case r.Options.ACLUser != "":
		opts.Username, opts.Password = r.Options.ACLUser, r.Options.ACLPass
	case r.Options.Password != "":
		opts.Password = r.Options.Password
	}
	c := goredis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// writeTLSFiles creates the throwaway CA, a server certificate for
// RedisServerName and 127.0.0.1 and a client certificate, in r.Dir.
func (r *Redis) writeTLSFiles() error {
	ca, err := newTestCA("caddy-acme testenv Redis CA")
	if err != nil {
		return err
	}
	// Redis uses the server certificate for the connections it makes
	// itself too (replication, cluster bus), hence both usages.
	if err := ca.issueFiles(r.Dir, "server", RedisServerName,
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		[]string{RedisServerName}, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		return err
	}
	if err := ca.issueFiles(r.Dir, "client", "caddy-acme testenv Redis client",
		[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil); err != nil {
		return err
	}
	r.CAPEM = ca.certPEM()
	r.CAFile = filepath.Join(r.Dir, "ca.pem")
	r.ClientCertFile = filepath.Join(r.Dir, "client-cert.pem")
	r.ClientKeyFile = filepath.Join(r.Dir, "client-key.pem")
	return os.WriteFile(r.CAFile, r.CAPEM, 0o600)
}

// RedisCluster is a running Redis Cluster of three masters (no replicas)
// on 127.0.0.1, stopped when the test that started it finishes.
type RedisCluster struct {
	// Addrs are host:port of the three masters.
	Addrs []string

	nodes []*Redis
}

// StartRedisCluster starts three redis-server cluster nodes, joins them
// into a cluster with redis-cli --cluster create (every master owning a
// third of the slots) and waits until every node reports cluster_state:ok.
func StartRedisCluster(t testing.TB) *RedisCluster {
	t.Helper()
	bin := FindBinary(t, "redis-server")
	cli := FindBinary(t, "redis-cli")
	c := &RedisCluster{}
	for i := range 3 {
		r := &Redis{Dir: t.TempDir(), bin: bin}
		var err error
		for attempt := 1; attempt <= 3; attempt++ {
			port, busPort := FreePort(t), FreePort(t)
			r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			if err = r.writeConfig(port, []string{
				"cluster-enabled yes",
				"cluster-config-file nodes.conf",
				"cluster-node-timeout 2000",
				"cluster-port " + strconv.Itoa(busPort),
			}); err != nil {
				break
			}
			err = r.start()
			if err == nil || !errors.Is(err, errPortInUse) {
				break
			}
			t.Logf("testenv: StartRedisCluster node %d attempt %d: %v; retrying on other ports", i, attempt, err)
		}
		if err != nil {
			t.Fatalf("testenv: StartRedisCluster: node %d: %v", i, err)
		}
		t.Cleanup(r.Stop)
		c.nodes = append(c.nodes, r)
		c.Addrs = append(c.Addrs, r.Addr)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("testenv: redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range c.nodes {
		client := goredis.NewClient(&goredis.Options{Addr: r.Addr})
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			info, err := client.ClusterInfo(ctx).Result()
			cancel()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:3") {
				break
			}
			if time.Now().After(deadline) {
				_ = client.Close()
				t.Fatalf("testenv: redis cluster node %s not ok after 30s: %v\n%s", r.Addr, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = client.Close()
	}
	return c
}

// Client returns a go-redis cluster client of the cluster, closed when the
// test finishes.
func (c *RedisCluster) Client(t testing.TB) *goredis.ClusterClient {
	t.Helper()
	client := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// Log returns the output of every node so far.
func (c *RedisCluster) Log() string {
	var b strings.Builder
	for _, r := range c.nodes {
		fmt.Fprintf(&b, "--- %s ---\n%s\n", r.Addr, r.Log())
	}
	return b.String()
}

// RedisSentinelMaster is the master name a RedisSentinel monitors.
const RedisSentinelMaster = "mymaster"

// RedisSentinel is a Redis master with one replica and one Sentinel
// monitoring them (quorum 1), on 127.0.0.1, stopped when the test that
// started it finishes.
type RedisSentinel struct {
	// MasterName is the name the Sentinel knows the master by.
	MasterName string

	// SentinelAddrs are host:port of the Sentinels (one).
	SentinelAddrs []string

	// Master and Replica are the data servers as started; after Failover
	// their roles are swapped.
	Master, Replica *Redis

	sentinel *Redis
}

// StartRedisSentinel starts a master, a replica of it and a Sentinel that
// monitors the master, and waits until the replica is in sync and the
// Sentinel knows both.
func StartRedisSentinel(t testing.TB) *RedisSentinel {
	t.Helper()
	sentinelBin := FindBinary(t, "redis-sentinel")
	s := &RedisSentinel{MasterName: RedisSentinelMaster}
	s.Master = StartRedis(t, RedisOptions{})
	s.Replica = startRedisWith(t, func(r *Redis, port int) error {
		host, mport, _ := net.SplitHostPort(s.Master.Addr)
		return r.writeConfig(port, []string{"replicaof " + host + " " + mport})
	})
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	rc := goredis.NewClient(&goredis.Options{Addr: s.Replica.Addr})
	defer rc.Close()
	for {
		info, err := rc.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: redis replica %s not in sync after 30s: %v\n%s", s.Replica.Addr, err, info)
		}
		time.Sleep(20 * time.Millisecond)
	}

	host, mport, _ := net.SplitHostPort(s.Master.Addr)
	s.sentinel = &Redis{Dir: t.TempDir(), bin: sentinelBin}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		port := FreePort(t)
		s.sentinel.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		// Sentinel rewrites its configuration file, so it must be
		// writable and its own.
		s.sentinel.conf = filepath.Join(s.sentinel.Dir, "sentinel.conf")
		conf := strings.Join([]string{
			"bind 127.0.0.1",
			"port " + strconv.Itoa(port),
			"daemonize no",
			`logfile ""`,
			"dir " + redisQuote(s.sentinel.Dir),
			fmt.Sprintf("sentinel monitor %s %s %s 1", s.MasterName, host, mport),
			fmt.Sprintf("sentinel down-after-milliseconds %s 1000", s.MasterName),
			fmt.Sprintf("sentinel failover-timeout %s 5000", s.MasterName),
		}, "\n") + "\n"
		if err = os.WriteFile(s.sentinel.conf, []byte(conf), 0o600); err != nil {
			break
		}
		var proc *process
		proc, err = startRedisProcess("redis-sentinel", sentinelBin, s.sentinel.conf)
		if err == nil {
			s.sentinel.proc = proc
			break
		}
		if !errors.Is(err, errPortInUse) {
			break
		}
		t.Logf("testenv: StartRedisSentinel attempt %d: %v; retrying on another port", attempt, err)
	}
	if err != nil {
		t.Fatalf("testenv: StartRedisSentinel: %v", err)
	}
	t.Cleanup(s.sentinel.Stop)
	s.SentinelAddrs = []string{s.sentinel.Addr}

	sc := goredis.NewSentinelClient(&goredis.Options{Addr: s.sentinel.Addr})
	defer sc.Close()
	for {
		addr, err := sc.GetMasterAddrByName(ctx, s.MasterName).Result()
		replicas, rerr := sc.Replicas(ctx, s.MasterName).Result()
		// A replica the Sentinel has not yet read INFO from is flagged
		// "disconnected" or lacks a master link, and cannot be promoted.
		if err == nil && rerr == nil && len(addr) == 2 && net.JoinHostPort(addr[0], addr[1]) == s.Master.Addr &&
			len(replicas) == 1 && replicas[0]["flags"] == "slave" && replicas[0]["master-link-status"] == "ok" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: redis sentinel %s does not know master and replica after 30s: %v, %v, %v, %v\n%s", s.sentinel.Addr, addr, err, replicas, rerr, s.sentinel.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// startRedisWith starts a redis-server whose configuration configure
// writes, retrying on other ports if the port was taken.
func startRedisWith(t testing.TB, configure func(r *Redis, port int) error) *Redis {
	t.Helper()
	r := &Redis{Dir: t.TempDir(), bin: FindBinary(t, "redis-server")}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		port := FreePort(t)
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err = configure(r, port); err != nil {
			break
		}
		err = r.start()
		if err == nil || !errors.Is(err, errPortInUse) {
			break
		}
		t.Logf("testenv: starting redis attempt %d: %v; retrying on another port", attempt, err)
	}
	if err != nil {
		t.Fatalf("testenv: starting redis: %v", err)
	}
	t.Cleanup(r.Stop)
	return r
}

// MasterAddr returns host:port of the current master, as the Sentinel
// reports it.
func (s *RedisSentinel) MasterAddr(t testing.TB) string {
	t.Helper()
	sc := goredis.NewSentinelClient(&goredis.Options{Addr: s.sentinel.Addr})
	defer sc.Close()
	addr, err := sc.GetMasterAddrByName(context.Background(), s.MasterName).Result()
	if err != nil || len(addr) != 2 {
		t.Fatalf("testenv: asking the sentinel for the master: %v %v", addr, err)
	}
	return net.JoinHostPort(addr[0], addr[1])
}

// Failover makes the Sentinel promote the replica (SENTINEL FAILOVER) and
// waits until it reports the new master and the new master accepts writes.
func (s *RedisSentinel) Failover(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	old := s.MasterAddr(t)
	sc := goredis.NewSentinelClient(&goredis.Options{Addr: s.sentinel.Addr})
	defer sc.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := sc.Failover(ctx, s.MasterName).Err()
		if err == nil {
			break
		}
		// NOGOODSLAVE: the Sentinel has not yet judged the replica fit.
		if !strings.Contains(err.Error(), "NOGOODSLAVE") || time.Now().After(deadline) {
			t.Fatalf("testenv: SENTINEL FAILOVER: %v\n%s", err, s.sentinel.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		addr := s.MasterAddr(t)
		if addr != old {
			c := goredis.NewClient(&goredis.Options{Addr: addr})
			role, err := c.Do(ctx, "ROLE").Slice()
			_ = c.Close()
			if err == nil && len(role) > 0 && role[0] == "master" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: sentinel failover did not complete in 30s (master still %s)\n%s", old, s.sentinel.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Log returns the output of the master, the replica and the Sentinel so
// far.
func (s *RedisSentinel) Log() string {
	return "--- master ---\n" + s.Master.Log() + "\n--- replica ---\n" + s.Replica.Log() + "\n--- sentinel ---\n" + s.sentinel.Log()
}
