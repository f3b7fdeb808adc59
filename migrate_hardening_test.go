package caddyacme

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// The tests in this file run `caddy acme-migrate` and `caddy adapt
// --adapter kong` as users do, through the real CLI, on hostile inputs:
// the files it writes (the account key) and the size and duration of
// what it reads.

// cliRun runs the caddy command and returns its output, exit status and
// duration; unlike kongCLI a failure is an answer, not a test failure.
// The command is killed after a minute, so that a hang fails the test
// instead of stalling it.
func cliRun(t *testing.T, args ...string) (stdout, stderr string, code int, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("caddy %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("caddy %s still running after %s\n%s", strings.Join(args, " "), took, errOut.String())
	}
	return out.String(), errOut.String(), code, took
}

// TestMigrateAccountKeyFileCLI: --account-key-file creates the file with
// mode 0600, never writes through a symbolic link, never overwrites an
// existing file (one holding exactly Kong's key is left as it is, so the
// command can be run again), and every failure exits with status 1.
func TestMigrateAccountKeyFileCLI(t *testing.T) {
	rd := testenv.StartRedis(t, testenv.RedisOptions{})
	r := newRig(t, testenv.PebbleOptions{})
	kd := kongIssue(t, r, "keys@kong.example.com") // the account only
	client := rd.Client(t)
	for k, v := range kd.entries(t, false) {
		if err := client.Set(t.Context(), k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	host, port, _ := net.SplitHostPort(rd.Addr)
	kongFile := migWriteFile(t, "kong.yml", kongPlugin(kd, fmt.Sprintf("    storage: redis\n    storage_config:\n      redis:\n        host: %s\n        port: %s\n", host, port)))
	cfg := r.config(r.acme(map[string]any{"account_email": kd.email, "domains": []string{"*.kong.example.com"}}), nil)
	cfgFile := migWriteFile(t, "caddy.json", string(cfg))
	migrate := func(keyFile string) (string, string, int) {
		t.Helper()
		stdout, stderr, code, _ := cliRun(t, "acme-migrate", "--from", kongFile, "--config", cfgFile, "--apply", "--account-key-file", keyFile)
		migCheckReport(t, stdout, kd)
		migCheckReport(t, stderr, kd)
		return stdout, stderr, code
	}
	dir := t.TempDir()
	other := []byte("not Kong's key\n")

	t.Run("created 0600", func(t *testing.T) {
		keyFile := filepath.Join(dir, "kong.key")
		stdout, stderr, code := migrate(keyFile)
		if code != 0 {
			t.Fatalf("exit status %d\n%s\n%s", code, stdout, stderr)
		}
		fi, err := os.Lstat(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o600 {
			t.Errorf("%s: mode %s, want -rw-------", keyFile, fi.Mode())
		}
		if got, _ := os.ReadFile(keyFile); !bytes.Contains(got, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds no private key", keyFile)
		}
		if !strings.Contains(stdout, "wrote Kong's account key to "+keyFile) {
			t.Errorf("no note of the key file in:\n%s", stdout)
		}

		// again, with the same file: left as it is
		stdout, stderr, code = migrate(keyFile)
		if code != 0 || !strings.Contains(stdout, keyFile+" already holds Kong's account key") {
			t.Errorf("second run: exit status %d\n%s\n%s", code, stdout, stderr)
		}
	})

	refused := func(t *testing.T, keyFile, want string) {
		t.Helper()
		stdout, stderr, code := migrate(keyFile)
		if code != 1 {
			t.Errorf("exit status %d, want 1\n%s\n%s", code, stdout, stderr)
		}
		// refused before anything is done (an error), or, when only Kong's key
		// tells, as the report's failed item
		out := stderr + stdout
		if !strings.Contains(out, "--account-key-file") || !strings.Contains(out, want) {
			t.Errorf("no %q naming --account-key-file in:\n%s\n%s", want, stdout, stderr)
		}
	}
	t.Run("existing file world-readable", func(t *testing.T) { // issue 13: the key went into it
		keyFile := filepath.Join(dir, "existing.key")
		if err := os.WriteFile(keyFile, other, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(keyFile, 0o644); err != nil {
			t.Fatal(err)
		}
		refused(t, keyFile, "refusing to overwrite")
		if got, _ := os.ReadFile(keyFile); !bytes.Equal(got, other) {
			t.Errorf("the existing file was overwritten: %q", got)
		}
	})
	t.Run("existing private file", func(t *testing.T) {
		keyFile := filepath.Join(dir, "private.key")
		if err := os.WriteFile(keyFile, other, 0o600); err != nil {
			t.Fatal(err)
		}
		refused(t, keyFile, "holds something else than Kong's account key: refusing to overwrite")
		if got, _ := os.ReadFile(keyFile); !bytes.Equal(got, other) {
			t.Errorf("the existing file was overwritten: %q", got)
		}
	})
	t.Run("symlink", func(t *testing.T) {
		target := filepath.Join(dir, "target.key")
		link := filepath.Join(dir, "link.key")
		if err := os.Symlink(target, link); err != nil { // dangling: the write would create target
			t.Fatal(err)
		}
		refused(t, link, "symbolic link")
		if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("written through the symbolic link: %v", err)
		}
	})
	t.Run("unwritable path", func(t *testing.T) {
		refused(t, "/nonexistent/x.key", "/nonexistent")
	})
}

// TestMigrateInputLimitsCLI: every input acme-migrate reads has a size
// limit, and an endless one (/dev/zero) is refused by it, with the flag and
// the limit named, before --timeout; --timeout covers a read that blocks.
func TestMigrateInputLimitsCLI(t *testing.T) {
	kongFile := migWriteFile(t, "kong.yml", "_format_version: \"3.0\"\nplugins:\n- name: acme\n  config: {account_email: ops@example.com}\n")
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"from", []string{"--from", "/dev/zero"}, []string{"--from", "/dev/zero", "larger than 16 MiB"}},
		{"kong-conf", []string{"--from", kongFile, "--kong-conf", "/dev/zero"}, []string{"--kong-conf", "/dev/zero", "larger than 1 MiB"}},
		{"config", []string{"--from", kongFile, "--config", "/dev/zero"}, []string{"--config", "/dev/zero", "larger than 64 MiB"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"acme-migrate", "--timeout", "20s"}, c.args...)
			stdout, stderr, code, _ := cliRun(t, args...)
			if code != 1 {
				t.Errorf("exit status %d, want 1\n%s\n%s", code, stdout, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("no %q in:\n%s", w, stderr)
				}
			}
			t.Logf("%s", stderr)
			// refused by the limit, not cut short by --timeout (under -race
			// on a busy machine, reading 64 MiB of /dev/zero took 13 s)
			if strings.Contains(stderr, "gave up after --timeout") {
				t.Errorf("refused by --timeout, not by the input's limit:\n%s", stderr)
			}
		})
	}

	t.Run("timeout covers reading", func(t *testing.T) {
		fifo := filepath.Join(t.TempDir(), "kong.yml")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Skip("no FIFO:", err)
		}
		stdout, stderr, code, took := cliRun(t, "acme-migrate", "--timeout", "1s", "--from", fifo) // nobody ever writes it
		if code != 1 || !strings.Contains(stderr, "gave up after --timeout 1s") {
			t.Errorf("exit status %d\n%s\n%s", code, stdout, stderr)
		}
		if took > 15*time.Second {
			t.Errorf("took %s with --timeout 1s", took)
		}
	})
}

// TestKongAdapterSizeLimitCLI: caddy adapt --adapter kong refuses an input
// over the adapter's limit before parsing it, saying which limit.
func TestKongAdapterSizeLimitCLI(t *testing.T) {
	var b bytes.Buffer
	b.WriteString("_format_version: \"3.0\"\nplugins:\n- name: acme\n  config: {account_email: ops@example.com}\nconsumers:\n")
	for i := 0; b.Len() <= 17<<20; i++ {
		fmt.Fprintf(&b, "- username: user-%08d\n", i)
	}
	big := migWriteFile(t, "kong.yml", b.String())
	stdout, stderr, code, took := cliRun(t, "adapt", "--adapter", "kong", "--config", big)
	if code == 0 {
		t.Fatalf("adapted a %d-byte config:\n%.500s", b.Len(), stdout)
	}
	for _, w := range []string{"more than 16 MiB", "the limit of the kong adapter"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("no %q in:\n%s", w, stderr)
		}
	}
	if strings.Contains(stderr, "alias") {
		t.Errorf("the message speaks of aliases, there are none:\n%s", stderr)
	}
	if took > 20*time.Second {
		t.Errorf("took %s", took)
	}
}
