package testenv

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PostgresOptions configures StartPostgres.
type PostgresOptions struct {
	// TLS makes the server accept TCP connections over TLS only (hostssl in
	// pg_hba.conf), with a certificate for 127.0.0.1 and localhost signed by
	// a throwaway CA (Postgres.CAFile).
	TLS bool

	// Password, if set, is the postgres superuser's password, and TCP
	// connections must authenticate with it (scram-sha-256). Empty: trust.
	Password string
}

// Postgres is a running PostgreSQL server (a fresh cluster in a temporary
// directory, listening on 127.0.0.1 only), stopped when the test that
// started it finishes.
type Postgres struct {
	// Host is always 127.0.0.1.
	Host string

	// Port is the TCP port on Host.
	Port int

	// User is the superuser, "postgres".
	User string

	// Password is PostgresOptions.Password.
	Password string

	// Database is the database created by initdb, "postgres".
	Database string

	// DSN is a URL connection string for Database, with the password and,
	// with TLS, sslmode=verify-full and sslrootcert=CAFile; without TLS,
	// sslmode=disable.
	DSN string

	// CAFile is the PEM file of the CA that signed the server certificate
	// (TLS only).
	CAFile string

	// CAPEM is the content of CAFile (TLS only).
	CAPEM []byte

	// Version is the server's major version, e.g. "15".
	Version string

	dir     string // owned by the postgres user when running as root
	dataDir string
	logFile string
	binDir  string
	tls     bool
	runAs   []string // runuser prefix when running as root
}

// PostgresBinDir returns the directory holding initdb, pg_ctl, postgres and
// psql: the newest /usr/lib/postgresql/<version>/bin (Debian's layout) that
// has them all, else the directory of an initdb found like FindBinary finds
// binaries (BinDirs, then $PATH).
func PostgresBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if pgHasTools(d) {
			return d, nil
		}
	}
	p, err := LookupBinary("initdb")
	if err != nil {
		return "", fmt.Errorf("PostgreSQL (initdb) not found in /usr/lib/postgresql/*/bin: %w", err)
	}
	d := filepath.Dir(p)
	if !pgHasTools(d) {
		return "", fmt.Errorf("%s has initdb but not pg_ctl, postgres and psql", d)
	}
	return d, nil
}

func pgHasTools(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres", "psql"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// StartPostgres initialises a new PostgreSQL cluster (UTF8, locale
// C.UTF-8, no fsync) in a temporary directory and starts it on a free port
// of 127.0.0.1, with its Unix socket in that directory too. As root, initdb
// and the server run as the postgres user (both refuse root), through
// runuser. The test is skipped (or, with CI=true, failed) when PostgreSQL
// is not installed; the server is stopped (by its PID, immediate shutdown)
// and its directory removed in t.Cleanup.
func StartPostgres(t testing.TB, opts PostgresOptions) *Postgres {
	t.Helper()
	binDir, err := PostgresBinDir()
	if err != nil {
		msg := fmt.Sprintf("testenv: %v; install it with %s postgres (from the repository root)", err, InstallCommand)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	p := &Postgres{
		Host:     "127.0.0.1",
		User:     "postgres",
		Password: opts.Password,
		Database: "postgres",
		binDir:   binDir,
		tls:      opts.TLS,
	}
	if p.Version, err = pgMajorVersion(binDir); err != nil {
		t.Fatalf("testenv: StartPostgres: %v", err)
	}
	if err := p.prepareDir(t); err != nil {
		t.Fatalf("testenv: StartPostgres: %v", err)
	}
	if err := p.initdb(); err != nil {
		t.Fatalf("testenv: StartPostgres: %v", err)
	}
	if opts.TLS {
		if err := p.writeTLSFiles(); err != nil {
			t.Fatalf("testenv: StartPostgres: writing TLS files: %v", err)
		}
	}
	for attempt := 1; ; attempt++ {
		err = p.start(FreePort(t))
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || attempt == 3 {
			t.Fatalf("testenv: StartPostgres: %v", err)
		}
		t.Logf("testenv: StartPostgres attempt %d: %v; retrying with another port", attempt, err)
	}
	t.Cleanup(p.stop)
	p.DSN = p.DSNFor(p.Database)
	return p
}

var pgVersionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

// pgMajorVersion returns the major version of the postgres binary in
// binDir ("15" for "postgres (PostgreSQL) 15.18 (Debian …)").
func pgMajorVersion(binDir string) (string, error) {
	out, err := exec.Command(filepath.Join(binDir, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("postgres --version: %w", err)
	}
	m := pgVersionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("postgres --version: unexpected output %q", out)
	}
	return string(m[1]), nil
}

// prepareDir creates the server's directory. t.TempDir's parents are
// private to the test's user, so as root the directory is made with
// os.MkdirTemp and handed to the postgres user instead.
func (p *Postgres) prepareDir(t testing.TB) error {
	dir, err := os.MkdirTemp("", "caddy-acme-postgres-")
	if err != nil {
		return err
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p.dir = dir
	p.dataDir = filepath.Join(dir, "data")
	p.logFile = filepath.Join(dir, "postgres.log")
	if err := os.Mkdir(filepath.Join(dir, "sock"), 0o700); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root needs the postgres user (created by Debian's postgresql package): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, d := range []string{dir, filepath.Join(dir, "sock")} {
		if err := os.Chown(d, uid, gid); err != nil {
			return err
		}
	}
	runuser, err := exec.LookPath("runuser")
	if err != nil {
		return fmt.Errorf("running as root needs runuser: %w", err)
	}
	p.runAs = []string{runuser, "-u", "postgres", "--"}
	return nil
}

// command returns a command running the PostgreSQL tool name, as the
// postgres user when running as root.
func (p *Postgres) command(name string, args ...string) *exec.Cmd {
	argv := append(slices.Clone(p.runAs), filepath.Join(p.binDir, name))
	argv = append(argv, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	return cmd
}

func (p *Postgres) initdb() error {
	args := []string{"-D", p.dataDir, "-U", p.User, "-E", "UTF8", "--locale=C.UTF-8", "-N", "--auth-local=trust"}
	if p.Password != "" {
		pwfile := filepath.Join(p.dir, "pwfile")
		if err := p.writeOwned(pwfile, []byte(p.Password+"\n")); err != nil {
			return err
		}
		args = append(args, "--pwfile="+pwfile, "--auth-host=scram-sha-256")
	} else {
		args = append(args, "--auth-host=trust")
	}
	out, err := p.command("initdb", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	if p.tls {
		// TCP connections over TLS only, so a test connecting in plain text
		// fails instead of silently passing.
		method := "trust"
		if p.Password != "" {
			method = "scram-sha-256"
		}
		hba := "local all all trust\nhostssl all all 127.0.0.1/32 " + method + "\n" //nolint:dupword // pg_hba.conf's columns
		if err := p.writeOwned(filepath.Join(p.dataDir, "pg_hba.conf"), []byte(hba)); err != nil {
			return err
		}
	}
	return nil
}

// writeOwned writes a file readable by the server only.
func (p *Postgres) writeOwned(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	if p.runAs == nil {
		return nil
	}
	fi, err := os.Stat(p.dir)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return os.Chown(path, int(st.Uid), int(st.Gid))
}

// start runs pg_ctl start on port and waits until the server accepts
// connections.
func (p *Postgres) start(port int) error {
	opts := []string{
		"-p", strconv.Itoa(port),
		"-k", filepath.Join(p.dir, "sock"),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=300",
	}
	if p.tls {
		opts = append(opts,
			"-c", "ssl=on",
			"-c", "ssl_cert_file="+filepath.Join(p.dir, "server.crt"),
			"-c", "ssl_key_file="+filepath.Join(p.dir, "server.key"))
	}
	_ = os.Remove(p.logFile)
	out, err := p.command("pg_ctl", "start", "-D", p.dataDir, "-l", p.logFile, "-w", "-t", "60",
		"-o", strings.Join(opts, " ")).CombinedOutput()
	if err != nil {
		logText, _ := os.ReadFile(p.logFile)
		if bytes.Contains(logText, []byte("Address already in use")) {
			return fmt.Errorf("port %d: %w", port, errPortInUse)
		}
		return fmt.Errorf("pg_ctl start: %w\n%s\n%s", err, out, pgTail(logText, 20))
	}
	p.Port = port
	return nil
}

// PID returns the postmaster's process ID, from postmaster.pid.
func (p *Postgres) PID() (int, error) {
	data, err := os.ReadFile(filepath.Join(p.dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}

// stop shuts the server down immediately (SIGQUIT to the postmaster's PID)
// and waits until it has exited; SIGKILL after a grace period.
func (p *Postgres) stop() {
	pid, err := p.PID()
	if err != nil {
		return // not running
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		return
	}
	if err := proc.Signal(syscall.SIGQUIT); err != nil {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if !pgAlive(proc) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = proc.Kill()
}

// pgAlive reports whether proc is still running; a zombie (exited, not yet
// reaped by its parent, init) is not.
func pgAlive(proc *os.Process) bool {
	if proc.Signal(syscall.Signal(0)) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", proc.Pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) state ...: comm may contain spaces and parentheses
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// Log returns the server's log so far.
func (p *Postgres) Log() string {
	data, _ := os.ReadFile(p.logFile)
	return string(data)
}

// DSNFor returns a URL connection string for database on this server,
// like DSN.
func (p *Postgres) DSNFor(database string) string {
	u := url.URL{
		Scheme: "postgres",
		Host:   net.JoinHostPort(p.Host, strconv.Itoa(p.Port)),
		Path:   "/" + database,
	}
	if p.Password != "" {
		u.User = url.UserPassword(p.User, p.Password)
	} else {
		u.User = url.User(p.User)
	}
	q := url.Values{}
	if p.tls {
		q.Set("sslmode", "verify-full")
		q.Set("sslrootcert", p.CAFile)
	} else {
		q.Set("sslmode", "disable")
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Exec runs SQL statements in database with psql, failing the test on an
// error, and returns psql's unaligned, tuples-only output.
func (p *Postgres) Exec(t testing.TB, database, sql string) string {
	t.Helper()
	out, err := p.exec(database, sql)
	if err != nil {
		t.Fatalf("testenv: psql in %s: %v", database, err)
	}
	return out
}

func (p *Postgres) exec(database, sql string) (string, error) {
	conn := fmt.Sprintf("host=%s port=%d user=%s dbname=%s", p.Host, p.Port, p.User, database)
	if p.tls {
		conn += " sslmode=require"
	} else {
		conn += " sslmode=disable"
	}
	cmd := exec.Command(filepath.Join(p.binDir, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conn, "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+p.Password, "PGCONNECT_TIMEOUT=10")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

var pgIdentifier = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// CreateDatabase creates the database name (lower-case letters, digits and
// underscores) from template0 with the given collation and character
// classification locale (e.g. "en_US.UTF-8"; empty: the cluster's C.UTF-8)
// and returns its DSN. It fails the test if the locale does not exist; see
// NonCLocale.
func (p *Postgres) CreateDatabase(t testing.TB, name, locale string) string {
	t.Helper()
	if !pgIdentifier.MatchString(name) {
		t.Fatalf("testenv: CreateDatabase: invalid database name %q", name)
	}
	sql := "CREATE DATABASE " + name + " TEMPLATE template0 ENCODING 'UTF8'"
	if locale != "" {
		lit := "'" + strings.ReplaceAll(locale, "'", "''") + "'"
		sql += " LC_COLLATE " + lit + " LC_CTYPE " + lit
	}
	p.Exec(t, p.Database, sql)
	return p.DSNFor(name)
}

// NonCLocale returns a locale whose collation is not byte order, for
// testing that queries do not depend on the database's collation:
// en_US.UTF-8 when the system has it (locales-all), else C.UTF-8 (a weaker
// test: glibc's C.UTF-8 sorts by code point), which is logged.
func NonCLocale(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("locale", "-a").Output()
	if err == nil {
		for l := range strings.FieldsSeq(string(out)) {
			if strings.EqualFold(l, "en_US.utf8") || strings.EqualFold(l, "en_US.UTF-8") {
				return "en_US.UTF-8"
			}
		}
	}
	t.Logf("testenv: en_US.UTF-8 locale not installed (Debian: locales-all; %s postgres installs it); using C.UTF-8", InstallCommand)
	return "C.UTF-8"
}

// writeTLSFiles creates a throwaway CA and a server certificate for
// 127.0.0.1 and localhost signed by it: ca.crt (the client's), server.crt
// and server.key (the server's, owned by it, mode 0600 as PostgreSQL
// requires).
func (p *Postgres) writeTLSFiles() error {
	ca, err := newTestCA("caddy-acme testenv PostgreSQL CA")
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.issue("localhost", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		[]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		return err
	}
	p.CAPEM = ca.certPEM()
	p.CAFile = filepath.Join(p.dir, "ca.crt")
	if err := os.WriteFile(p.CAFile, p.CAPEM, 0o644); err != nil { //nolint:gosec // a CA certificate, public
		return err
	}
	if err := p.writeOwned(filepath.Join(p.dir, "server.crt"), certPEM); err != nil {
		return err
	}
	return p.writeOwned(filepath.Join(p.dir, "server.key"), keyPEM)
}

func pgTail(log []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(log), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
