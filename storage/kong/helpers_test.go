package kong

import (
	"context"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// provision provisions s as Caddy would, failing the test on an error, and
// cleans it up with the test.
func provision(t testing.TB, s *Storage) *Storage {
	t.Helper()
	if err := tryProvision(t, s); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return s
}

func tryProvision(t testing.TB, s *Storage) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	err := s.Provision(ctx)
	t.Cleanup(func() {
		if err := s.Cleanup(); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
		cancel()
	})
	return err
}

var nodeSeq atomic.Int64

// nodeDSN returns dsn with a unique application_name, so that the storage
// gets a pool of its own, as a separate node would.
func nodeDSN(t testing.TB, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", fmt.Sprintf("caddy-acme-test-node-%d", nodeSeq.Add(1)))
	u.RawQuery = q.Encode()
	return u.String()
}

// newNode returns a provisioned storage on its own pool over dsn, with
// key_prefix prefix and the given lock lease (0: default).
func newNode(t testing.TB, dsn, prefix string, lease time.Duration) *Storage {
	t.Helper()
	return provision(t, &Storage{
		DSN:       nodeDSN(t, dsn),
		KeyPrefix: prefix,
		Options:   backend.Options{LockLease: caddy.Duration(lease)},
	})
}

// rawPool is a plain pgx pool on dsn, for inspecting and seeding the table.
func rawPool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// startPostgres starts a server for one test.
func startPostgres(t testing.TB, opts testenv.PostgresOptions) *testenv.Postgres {
	t.Helper()
	return testenv.StartPostgres(t, opts)
}
