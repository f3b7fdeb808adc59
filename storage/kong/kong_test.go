package kong

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// within bounds waits that must end (a hang guard, never a speed check).
const within = 30 * time.Second

// kongTrigger is Kong's TTL trigger on acme_storage (core migration
// 016_280_to_300 and acme 002_320_to_330), which every INSERT fires.
const kongTrigger = `
CREATE OR REPLACE FUNCTION batch_delete_expired_rows() RETURNS trigger
LANGUAGE plpgsql
AS $$
  BEGIN
    EXECUTE FORMAT('WITH rows AS (SELECT ctid FROM %s WHERE %s < CURRENT_TIMESTAMP AT TIME ZONE ''UTC'' ORDER BY %s LIMIT 2 FOR UPDATE SKIP LOCKED) DELETE FROM %s WHERE ctid IN (TABLE rows)', TG_TABLE_NAME, TG_ARGV[0], TG_ARGV[0], TG_TABLE_NAME);
    RETURN NULL;
  END;
$$;
CREATE TRIGGER "acme_storage_ttl_trigger" AFTER INSERT ON "acme_storage"
FOR EACH STATEMENT EXECUTE PROCEDURE batch_delete_expired_rows("ttl");`

// kongRows are rows as Kong's acme plugin writes them (lua-resty-acme key
// layout), with live ttls where Kong sets one.
var kongRows = []struct {
	key, value string
	ttl        string // SQL expression, or "NULL"
}{
	{"kong_acme:account:https://acme-v02.api.letsencrypt.org/directory:b3BzQGV4YW1wbGUuY29t", `{"key":"-----BEGIN PRIVATE KEY-----\n…","kid":"https://acme/acct/1"}`, "NULL"},
	{"kong_acme:renew_config:example.com", `{"host":"example.com","expire_at":1893456000}`, "NULL"},
	{"kong_acme:cert_key:example.com", `{"cert":"-----BEGIN CERTIFICATE-----","key":"-----BEGIN PRIVATE KEY-----"}`, "NULL"},
	{"kong_acme:renew_last_run", "1700000000", "NULL"},
	{"kong_acme:lock:example.com", "lock", "now() + interval '1 hour'"},
	{"kong_acme:failed_attempt:example.com", "1", "now() + interval '5 minutes'"},
	{"kong_acme:http-01:dGVzdA", "dGVzdA.thumbprint", "now() + interval '1 hour'"},
}

// snapshot returns every row outside prefix, in key order, as text.
func snapshot(t testing.TB, raw *pgxpool.Pool, prefix string) []string {
	t.Helper()
	rows, err := raw.Query(context.Background(),
		`SELECT id::text || '|' || key || '|' || value || '|' || coalesce(created_at::text, '') || '|' || coalesce(ttl::text, '')
		 FROM acme_storage WHERE NOT starts_with(key, $1) ORDER BY key COLLATE "C"`, prefix)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestKongCoexistence shares a database with "Kong": its table (made by
// Kong's DDL, with Kong's TTL trigger), its rows, and a session time zone
// that is not UTC. Nothing we do reads, lists, changes or deletes Kong's
// rows, even keys of ours that look like Kong's, or Delete("").
func TestKongCoexistence(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := startPostgres(t, testenv.PostgresOptions{})
	raw := rawPool(t, pg.DSN)
	for _, q := range []string{ddlTable, ddlTTLIdx, kongTrigger, `ALTER DATABASE postgres SET timezone = 'America/New_York'`} {
		if _, err := raw.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, r := range kongRows {
		if _, err := raw.Exec(ctx, `INSERT INTO acme_storage (id, key, value, created_at, ttl) VALUES (gen_random_uuid(), $1, $2, now(), `+r.ttl+`)`, r.key, r.value); err != nil {
			t.Fatal(err)
		}
	}
	kong := snapshot(t, raw, "caddy/")
	if len(kong) != len(kongRows) {
		t.Fatalf("seeded %d Kong rows, found %d", len(kongRows), len(kong))
	}

	s := newNode(t, pg.DSN, "", 0) // default key_prefix caddy/
	other := newNode(t, pg.DSN, "other", 0)
	if err := other.Store(ctx, "certificates/x", []byte("other's")); err != nil {
		t.Fatal(err)
	}
	ours := []string{
		"kong_acme:renew_config:example.com", // looks like Kong's, is ours
		"kong_acme:account:https://acme-v02.api.letsencrypt.org/directory:x",
		"certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.crt",
		"last_clean.json",
	}
	for _, k := range ours {
		if err := s.Store(ctx, k, []byte("ours: "+k)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.Load(ctx, "kong_acme:renew_config:example.com"); err != nil || string(got) != "ours: kong_acme:renew_config:example.com" {
		t.Fatalf("Load of our Kong-looking key = %q, %v", got, err)
	}
	if keys, err := s.List(ctx, "", false); err != nil || !slices.Equal(sorted(keys), []string{"certificates", "kong_acme:account:https:", "kong_acme:renew_config:example.com", "last_clean.json"}) {
		t.Fatalf("List(root) = %q, %v", keys, err)
	}
	all, err := s.List(ctx, "", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range all {
		if strings.HasPrefix(k, "other") || strings.Contains(k, "cert_key") || strings.Contains(k, "lock") {
			t.Fatalf("List(\"\", true) shows a key not ours: %q (all: %q)", k, all)
		}
	}

	// a lock held through Kong's trigger, which every insert fires: the
	// lock row's ttl must not look expired to it
	if err := s.Lock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := other.Store(ctx, fmt.Sprintf("fire/trigger/%d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := other.TryLock(ctx, "issue_cert_example.com"); err != nil || !ok {
		t.Fatalf("another prefix's TryLock of the same name = %v, %v; want true (independent)", ok, err)
	}
	other2 := newNode(t, pg.DSN, "", 0)
	if ok, err := other2.TryLock(ctx, "issue_cert_example.com"); err != nil || ok {
		t.Fatalf("TryLock of a held lock after Kong's trigger ran = %v, %v; want false: the trigger deleted the live lock", ok, err)
	}

	if err := s.Delete(ctx, "kong_acme:renew_config:example.com"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if keys, err := s.List(ctx, "", true); err != nil || len(keys) != 0 {
		t.Fatalf("List after Delete(\"\") = %q, %v", keys, err)
	}
	if ok, err := other2.TryLock(ctx, "issue_cert_example.com"); err != nil || ok {
		t.Fatalf("Delete(\"\") released a held lock: TryLock = %v, %v", ok, err)
	}
	if err := s.Unlock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	if err := other.Unlock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	if got, err := other.Load(ctx, "certificates/x"); err != nil || string(got) != "other's" {
		t.Fatalf("another prefix's key after Delete(\"\") = %q, %v", got, err)
	}
	if err := other.Delete(ctx, ""); err != nil {
		t.Fatal(err)
	}

	if after := snapshot(t, raw, "caddy/"); !slices.Equal(after, kong) {
		t.Fatalf("Kong's rows changed:\nbefore %q\nafter  %q", kong, after)
	}
	var n int
	if err := raw.QueryRow(ctx, `SELECT count(*) FROM acme_storage WHERE NOT starts_with(key, 'kong_acme:')`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows of ours left after Delete(\"\") and Unlock (%v)", n, err)
	}
}

// TestExpiredRows: a row of ours whose ttl has passed is absent, as Kong's
// reads make it.
func TestExpiredRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := startPostgres(t, testenv.PostgresOptions{})
	s := newNode(t, pg.DSN, "caddy", 0)
	for _, k := range []string{"dir/expired", "dir2/expired", "dir/live"} {
		if err := s.Store(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	raw := rawPool(t, pg.DSN)
	if _, err := raw.Exec(ctx, `UPDATE acme_storage SET ttl = now() - interval '1 second' WHERE key IN ('caddy/dir/expired', 'caddy/dir2/expired')`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "dir/expired"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of an expired row: %v", err)
	}
	if _, err := s.Stat(ctx, "dir/expired"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat of an expired row: %v", err)
	}
	if s.Exists(ctx, "dir/expired") || s.Exists(ctx, "dir2") {
		t.Fatal("Exists of an expired row, or of a directory of expired rows")
	}
	if keys, err := s.List(ctx, "", true); err != nil || !slices.Equal(sorted(keys), []string{"dir", "dir/live"}) {
		t.Fatalf("List = %q, %v", keys, err)
	}
	if err := s.Store(ctx, "dir/expired", []byte("again")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(ctx, "dir/expired"); err != nil || string(got) != "again" {
		t.Fatalf("Load after Store over an expired row = %q, %v", got, err)
	}
}

// TestTableCreation: Provision makes no connection; the first use creates
// Kong's table, exactly, and our index, once even when nodes start
// together; schema places it in another schema.
func TestTableCreation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := startPostgres(t, testenv.PostgresOptions{})
	dsn := pg.CreateDatabase(t, "fresh", "")
	raw := rawPool(t, dsn)
	exists := func(name string) bool {
		var ok bool
		if err := raw.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}

	nodes := make([]*Storage, 4)
	for i := range nodes {
		nodes[i] = newNode(t, dsn, "caddy", 0)
	}
	if exists("acme_storage") {
		t.Fatal("Provision created the table: it must make no connection")
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for i, s := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Store(ctx, fmt.Sprintf("node/%d", i), []byte("x"))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Store on a fresh database: %v", err)
		}
	}

	rows, err := raw.Query(ctx, `SELECT column_name || ' ' || data_type FROM information_schema.columns WHERE table_name = 'acme_storage' ORDER BY ordinal_position`)
	if err != nil {
		t.Fatal(err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"id uuid", "key text", "value text", "created_at timestamp with time zone", "ttl timestamp with time zone"}
	if !slices.Equal(cols, want) {
		t.Fatalf("columns %q, want Kong's %q", cols, want)
	}
	rows, err = raw.Query(ctx, `SELECT indexname || ': ' || indexdef FROM pg_indexes WHERE tablename = 'acme_storage' ORDER BY indexname`)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	wantIdx := []string{
		`acme_storage_key_c_idx: CREATE INDEX acme_storage_key_c_idx ON public.acme_storage USING btree (key COLLATE "C")`,
		`acme_storage_key_key: CREATE UNIQUE INDEX acme_storage_key_key ON public.acme_storage USING btree (key)`,
		`acme_storage_pkey: CREATE UNIQUE INDEX acme_storage_pkey ON public.acme_storage USING btree (id)`,
		`acme_storage_ttl_idx: CREATE INDEX acme_storage_ttl_idx ON public.acme_storage USING btree (ttl)`,
	}
	if !slices.Equal(idx, wantIdx) {
		t.Fatalf("indexes\n%q\nwant\n%q", idx, wantIdx)
	}
	// Kong's migrations, run afterwards, find nothing to do
	for _, q := range []string{ddlTable, ddlTTLIdx} {
		if _, err := raw.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("schema", func(t *testing.T) {
		if _, err := raw.Exec(ctx, `CREATE SCHEMA kong`); err != nil {
			t.Fatal(err)
		}
		s := provision(t, &Storage{DSN: nodeDSN(t, dsn), PgSchema: "kong"})
		if err := s.Store(ctx, "in/kong", []byte("x")); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := raw.QueryRow(ctx, `SELECT count(*) FROM kong.acme_storage WHERE key = 'caddy/in/kong'`).Scan(&n); err != nil || n != 1 {
			t.Fatalf("row in kong.acme_storage: %d, %v", n, err)
		}
		if !exists("kong.acme_storage_key_c_idx") {
			t.Fatal("no index in schema kong")
		}
	})
}

// TestUnreachable: with no server, Provision succeeds (no I/O) and every
// operation reports the connection error, never "not found".
func TestUnreachable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	port := testenv.FreePort(t) // nothing listens there
	s := provision(t, &Storage{Host: "127.0.0.1", Port: port, User: "u", Database: "d", SSLMode: "disable", ConnectTimeout: caddy.Duration(5 * time.Second)})
	checks := map[string]error{}
	_, checks["Load"] = s.Load(ctx, "a")
	_, checks["Stat"] = s.Stat(ctx, "a")
	_, checks["List"] = s.List(ctx, "a", false)
	checks["Store"] = s.Store(ctx, "a", []byte("x"))
	checks["Delete"] = s.Delete(ctx, "a")
	checks["Lock"] = s.Lock(ctx, "a")
	_, checks["TryLock"] = s.TryLock(ctx, "a")
	for op, err := range checks {
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s with the server down: %v; want the connection error", op, err)
		} else if !strings.Contains(err.Error(), "connect") {
			t.Errorf("%s: %v; want it to say it could not connect", op, err)
		}
	}
	if s.Exists(ctx, "a") {
		t.Error("Exists is true with the server down")
	}
}

// TestTLS connects over TLS to a server that accepts nothing else, with a
// CA of the test's own, by DSN, by fields and by Kong's names, and checks
// what must fail does.
func TestTLS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const password = "tls pass'word"
	pg := startPostgres(t, testenv.PostgresOptions{TLS: true, Password: password})
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}
	yes := true
	fields := func() *Storage {
		return &Storage{Host: "127.0.0.1", Port: pg.Port, User: pg.User, Password: "{file." + pwFile + "}", Database: pg.Database, SSLMode: "verify-full", SSLRootCert: pg.CAFile}
	}
	ok := map[string]*Storage{
		"dsn":    {DSN: nodeDSN(t, pg.DSN)},
		"fields": fields(),
		"kong aliases": {
			PgHost: "localhost", PgPort: pg.Port, PgUser: pg.User, PgPassword: password, PgDatabase: pg.Database,
			PgSSL: &yes, PgSSLVerify: &yes, SSLRootCert: pg.CAFile,
		},
		"tls_server_name": func() *Storage { s := fields(); s.TLSServerName = "localhost"; return s }(),
	}
	for name, s := range ok {
		t.Run(name, func(t *testing.T) {
			provision(t, s)
			if err := s.Store(ctx, "tls/"+name, []byte("x")); err != nil {
				t.Fatal(err)
			}
			pool, err := s.client.get(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var ssl bool
			if err := pool.QueryRow(ctx, `SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl); err != nil || !ssl {
				t.Fatalf("connection uses TLS: %v, %v", ssl, err)
			}
		})
	}

	bad := map[string]struct {
		s    *Storage
		want string
	}{
		"wrong server name": {func() *Storage { s := fields(); s.TLSServerName = "db.example.net"; return s }(), "certificate"},
		"no CA":             {func() *Storage { s := fields(); s.SSLRootCert = ""; return s }(), "certificate"},
		"plain text":        {func() *Storage { s := fields(); s.SSLMode, s.SSLRootCert = "disable", ""; return s }(), "pg_hba.conf"},
		"wrong password":    {func() *Storage { s := fields(); s.Password = "not-" + password; return s }(), "password authentication failed"},
	}
	for name, c := range bad {
		t.Run(name, func(t *testing.T) {
			provision(t, c.s)
			_, err := c.s.Load(ctx, "tls/fields")
			if err == nil || errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Load: %v; want an error about %q", err, c.want)
			}
			if strings.Contains(err.Error(), password) {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
}

// TestEncryption: values are sealed at rest; a wrong key, a tampered value,
// a value moved to another key, or a plain value read with a key are clear
// errors, never garbage, never "not found".
func TestEncryption(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := startPostgres(t, testenv.PostgresOptions{})
	const keyA = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="                     // base64 of 32 bytes
	const keyB = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" // hex, another key
	open := func(key string) *Storage {
		return provision(t, &Storage{DSN: nodeDSN(t, pg.DSN), Options: backend.Options{EncryptionKey: key}})
	}
	a, b, plain := open(keyA), open(keyB), open("")
	secret := []byte("-----BEGIN EC PRIVATE KEY-----\nsecret\n")
	if err := a.Store(ctx, "keys/site.key", secret); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Load(ctx, "keys/site.key"); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Load with the right key = %q, %v", got, err)
	}
	if info, err := a.Stat(ctx, "keys/site.key"); err != nil || info.Size != int64(len(secret)) {
		t.Fatalf("Stat = %+v, %v; want the plain size %d", info, err, len(secret))
	}
	raw := rawPool(t, pg.DSN)
	var stored string
	if err := raw.QueryRow(ctx, `SELECT value FROM acme_storage WHERE key = 'caddy/keys/site.key'`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stored, marker) || strings.Contains(stored, "secret") {
		t.Fatalf("stored value %q is not sealed", stored)
	}

	wantOpenErr := func(what string, err error) {
		t.Helper()
		if err == nil || errors.Is(err, fs.ErrNotExist) || !errors.Is(err, backend.ErrOpen) || !strings.Contains(err.Error(), "wrong encryption key or tampered value") {
			t.Fatalf("%s: %v; want backend.ErrOpen", what, err)
		}
	}
	_, err := b.Load(ctx, "keys/site.key")
	wantOpenErr("Load with another key", err)

	if _, err := raw.Exec(ctx, `INSERT INTO acme_storage (id, key, value, created_at) SELECT gen_random_uuid(), 'caddy/keys/moved.key', value, now() FROM acme_storage WHERE key = 'caddy/keys/site.key'`); err != nil {
		t.Fatal(err)
	}
	_, err = a.Load(ctx, "keys/moved.key")
	wantOpenErr("Load of a value copied under another key", err)

	tampered := []byte(stored) // one base64 character changed to another
	if i := len(tampered) - 3; tampered[i] == 'A' {
		tampered[i] = 'B'
	} else {
		tampered[i] = 'A'
	}
	if _, err := raw.Exec(ctx, `UPDATE acme_storage SET value = $1 WHERE key = 'caddy/keys/site.key'`, string(tampered)); err != nil {
		t.Fatal(err)
	}
	_, err = a.Load(ctx, "keys/site.key")
	wantOpenErr("Load of a tampered value", err)

	if err := plain.Store(ctx, "keys/plain", []byte("plain")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Load(ctx, "keys/plain"); err == nil || !strings.Contains(err.Error(), "not encrypted") {
		t.Fatalf("Load of a plain value with a key: %v", err)
	}
}

// TestLockDetails covers what the suite leaves out: handoff by
// notification alone (no polling), after the listener's connection was
// killed too; a lock lost while held; Unlock of a lock never held.
func TestLockDetails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := startPostgres(t, testenv.PostgresOptions{})
	raw := rawPool(t, pg.DSN)

	t.Run("HandoffByNotification", func(t *testing.T) {
		a := newNode(t, pg.DSN, "caddy", time.Minute)
		b := newNode(t, pg.DSN, "caddy", time.Minute)
		b.poll = time.Hour // only a notification can wake b
		for round := range 3 {
			if err := a.Lock(ctx, "handoff"); err != nil {
				t.Fatal(err)
			}
			got := make(chan error, 1)
			go func() { got <- b.Lock(ctx, "handoff") }()
			if round == 2 {
				// kill b's listener once it listens: it must reconnect, and
				// retry the lock when it does
				waitListener(t, raw, b)
				if _, err := raw.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND query = 'LISTEN `+notifyChannel+`'`, appName(b)); err != nil {
					t.Fatal(err)
				}
			}
			if err := a.Unlock(ctx, "handoff"); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-got:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(within):
				t.Fatalf("round %d: b was not woken by the release", round)
			}
			if err := b.Unlock(ctx, "handoff"); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("LostWhileHeld", func(t *testing.T) {
		a := newNode(t, pg.DSN, "caddy", time.Minute)
		core, logs := observer.New(zapcore.WarnLevel)
		a.logger = zap.New(core)
		if err := a.Lock(ctx, "lost"); err != nil {
			t.Fatal(err)
		}
		// another node took it over after a's lease lapsed
		if _, err := raw.Exec(ctx, `UPDATE acme_storage SET value = 'someone-else' WHERE key = $1`, a.lockKey("lost")); err != nil {
			t.Fatal(err)
		}
		if err := a.RenewLockLease(ctx, "lost", time.Minute); !errors.Is(err, errLockLost) {
			t.Fatalf("RenewLockLease of a lost lock: %v", err)
		}
		if err := a.Unlock(ctx, "lost"); err != nil {
			t.Fatalf("Unlock of a lost lock: %v", err)
		}
		var value string
		if err := raw.QueryRow(ctx, `SELECT value FROM acme_storage WHERE key = $1`, a.lockKey("lost")).Scan(&value); err != nil || value != "someone-else" {
			t.Fatalf("the new holder's row after the old holder's Unlock: %q, %v", value, err)
		}
		if logs.FilterMessageSnippet("lock was lost").Len() != 1 {
			t.Fatalf("no warning about the lost lock: %v", logs.All())
		}
	})

	t.Run("UnlockNotHeld", func(t *testing.T) {
		a := newNode(t, pg.DSN, "caddy", time.Minute)
		if err := a.Unlock(ctx, "never"); err == nil || !strings.Contains(err.Error(), "not held") {
			t.Fatalf("Unlock of a lock never held: %v", err)
		}
		if err := a.RenewLockLease(ctx, "never", time.Minute); err == nil {
			t.Fatal("RenewLockLease of a lock never held succeeded")
		}
	})

	t.Run("LeaseOnServerClock", func(t *testing.T) {
		a := newNode(t, pg.DSN, "caddy", time.Minute)
		if err := a.Lock(ctx, "lease"); err != nil {
			t.Fatal(err)
		}
		defer a.Unlock(ctx, "lease")
		if err := a.RenewLockLease(ctx, "lease", time.Hour); err != nil {
			t.Fatal(err)
		}
		var left time.Duration
		if err := raw.QueryRow(ctx, `SELECT ttl - now() FROM acme_storage WHERE key = $1`, a.lockKey("lease")).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left < 59*time.Minute || left > time.Hour {
			t.Fatalf("lease left after RenewLockLease(1h): %s", left)
		}
	})
}

func appName(s *Storage) string {
	return s.client.cfg.ConnConfig.RuntimeParams["application_name"]
}

// waitListener waits until s's notification listener is LISTENing.
func waitListener(t *testing.T, raw *pgxpool.Pool, s *Storage) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var n int
		if err := raw.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query = 'LISTEN `+notifyChannel+`'`, appName(s)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the listener never listened")
}

// TestListBothWays: a directory is listed from one range read when at most
// listRangeRead live keys lie below it, by the skip scan otherwise; both
// give the same children (files, subdirectories met once however many keys
// they hold, expired rows left out) at the boundary and past it.
func TestListBothWays(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := startPostgres(t, testenv.PostgresOptions{})
	s := newNode(t, pg.DSN, "caddy", 0)
	raw := rawPool(t, pg.DSN)
	for _, n := range []int{listRangeRead - 1, listRangeRead, listRangeRead + 1, 3 * listRangeRead} {
		dir := fmt.Sprintf("d%d", n)
		want := map[string]bool{}
		for i := range n {
			// a third files, the rest below three subdirectories
			key := fmt.Sprintf("%s/f%03d", dir, i)
			if i%3 != 0 {
				key = fmt.Sprintf("%s/sub%d/k%03d", dir, i%3, i)
			}
			if err := s.Store(ctx, key, []byte("x")); err != nil {
				t.Fatal(err)
			}
			want[strings.Join(strings.Split(key, "/")[:2], "/")] = true
		}
		// an expired row counts for neither way
		if _, err := raw.Exec(ctx, `INSERT INTO acme_storage (id, key, value, created_at, ttl) VALUES (gen_random_uuid(), $1, 'x', now(), now() - interval '1 second')`, "caddy/"+dir+"/expired"); err != nil {
			t.Fatal(err)
		}
		keys, err := s.List(ctx, dir, false)
		if err != nil {
			t.Fatalf("List(%s): %v", dir, err)
		}
		if got := sorted(keys); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
			t.Fatalf("List(%s) with %d keys below = %q, want %q", dir, n, got, slices.Sorted(maps.Keys(want)))
		}
	}
}
