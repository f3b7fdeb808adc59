package testenv

import (
	"os"
	"strings"
	"testing"
)

func TestPostgres(t *testing.T) {
	t.Parallel()
	var pid int
	t.Run("start", func(t *testing.T) {
		pg := StartPostgres(t, PostgresOptions{})
		if pg.Port <= 0 || pg.Host != "127.0.0.1" {
			t.Fatalf("Host %q Port %d", pg.Host, pg.Port)
		}
		if !strings.Contains(pg.DSN, "sslmode=disable") {
			t.Fatalf("DSN %q", pg.DSN)
		}
		if got := pg.Exec(t, "postgres", "SELECT current_setting('listen_addresses'), current_setting('fsync')"); got != "127.0.0.1|off" {
			t.Fatalf("listen_addresses|fsync = %q", got)
		}
		if got := pg.Exec(t, "postgres", "SELECT current_setting('server_version_num')::int / 10000"); got != pg.Version {
			t.Fatalf("server major version %q, Version %q", got, pg.Version)
		}

		locale := NonCLocale(t)
		pg.CreateDatabase(t, "collated", locale)
		if got := pg.Exec(t, "postgres", "SELECT datcollate FROM pg_database WHERE datname = 'collated'"); got != locale {
			t.Fatalf("datcollate = %q, want %q", got, locale)
		}
		if locale == "en_US.UTF-8" {
			// not byte order: lower case sorts before upper case
			if got := pg.Exec(t, "collated", "SELECT 'a' < 'B'"); got != "t" {
				t.Fatalf("'a' < 'B' in en_US.UTF-8 = %q", got)
			}
		}

		var err error
		if pid, err = pg.PID(); err != nil || pid <= 0 {
			t.Fatalf("PID = %d, %v", pid, err)
		}
	})
	if pid == 0 {
		return
	}
	if proc, err := os.FindProcess(pid); err == nil && pgAlive(proc) {
		t.Fatalf("postmaster %d still running after the test's cleanup", pid)
	}
}

func TestPostgresTLSAndPassword(t *testing.T) {
	t.Parallel()
	pg := StartPostgres(t, PostgresOptions{TLS: true, Password: "s3cret 'quoted'"})
	if pg.CAFile == "" || len(pg.CAPEM) == 0 {
		t.Fatal("no CA file with TLS")
	}
	if _, err := os.Stat(pg.CAFile); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(pg.DSN, "sslmode=verify-full") || !strings.Contains(pg.DSN, "sslrootcert=") {
		t.Fatalf("DSN %q", pg.DSN)
	}
	if got := pg.Exec(t, "postgres", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); got != "t" {
		t.Fatalf("connection uses TLS = %q", got)
	}

	// plain text TCP is refused (hostssl only), and so is a wrong password
	plain := *pg
	plain.tls = false
	if _, err := plain.exec("postgres", "SELECT 1"); err == nil {
		t.Fatal("a plain-text connection was accepted by a TLS-only server")
	}
	wrong := *pg
	wrong.Password = "wrong"
	if _, err := wrong.exec("postgres", "SELECT 1"); err == nil {
		t.Fatal("a wrong password was accepted")
	}
}
