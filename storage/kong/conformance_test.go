package kong

import (
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/acmekit/caddy-acme/internal/testenv"
	"github.com/acmekit/caddy-acme/storage/storagetest"
)

// testLease is the lock lease of the conformance runs: short, so that the
// crash takeover is quick.
const testLease = 2 * time.Second

func conformance(t *testing.T, dsn string) {
	storagetest.Run(t, func(t testing.TB, namespace string) certmagic.Storage {
		return newNode(t, dsn, "st/"+namespace, testLease)
	}, storagetest.Options{
		Lease: testLease,
		Crash: func(s certmagic.Storage) { s.(*Storage).crash() },
	})
}

// TestConformance runs the suite on a database with the cluster's C.UTF-8
// collation, and on one with a collation that is not byte order
// (en_US.UTF-8 where installed), as Kong's database often has.
func TestConformance(t *testing.T) {
	t.Parallel()
	pg := startPostgres(t, testenv.PostgresOptions{})
	t.Run("C.UTF-8", func(t *testing.T) { conformance(t, pg.DSN) })
	locale := testenv.NonCLocale(t)
	t.Run(locale, func(t *testing.T) { conformance(t, pg.CreateDatabase(t, "collated", locale)) })
}
