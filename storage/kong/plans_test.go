package kong

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/acmekit/caddy-acme/internal/testenv"
)

// TestQueryPlans fills acme_storage with 120k rows (100k below one
// directory of ours, 10k of Kong's, 10k of another prefix) and checks, with
// EXPLAIN (ANALYZE, BUFFERS), that every query of ours is answered from an
// index and reads a small fraction of the table: a non-recursive List of a
// directory whose 10 children hold 100k keys reads O(10) index entries.
// Both generic plans (what pgx's cached prepared statements get after five
// runs) and custom plans are checked, on the cluster's C.UTF-8 database and
// on one whose collation is not byte order.
func TestQueryPlans(t *testing.T) {
	t.Parallel()
	pg := startPostgres(t, testenv.PostgresOptions{})
	t.Run("C.UTF-8", func(t *testing.T) { testPlans(t, pg.DSN) })
	locale := testenv.NonCLocale(t)
	t.Run(locale, func(t *testing.T) { testPlans(t, pg.CreateDatabase(t, "collated", locale)) })
}

func testPlans(t *testing.T, dsn string) {
	ctx := context.Background()
	s := newNode(t, dsn, "caddy", 0)
	for i := range 10 {
		if err := s.Store(ctx, fmt.Sprintf("small/f%d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	raw := rawPool(t, dsn)
	for _, q := range []string{
		`INSERT INTO acme_storage (id, key, value, created_at)
		 SELECT gen_random_uuid(), 'caddy/big/sub' || (i % 10) || '/k' || i, 'value ' || i, now() FROM generate_series(1, 100000) i`,
		`INSERT INTO acme_storage (id, key, value, created_at, ttl)
		 SELECT gen_random_uuid(), 'kong_acme:renew_config:host' || i || '.example.com', '{"host":"x"}', now(), CASE WHEN i % 2 = 0 THEN now() + interval '1 day' END FROM generate_series(1, 10000) i`,
		`INSERT INTO acme_storage (id, key, value, created_at)
		 SELECT gen_random_uuid(), 'zzz/other/' || i, 'v', now() FROM generate_series(1, 10000) i`,
		`ANALYZE acme_storage`,
	} {
		if _, err := raw.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	// the answers first
	keys, err := s.List(ctx, "big", false)
	slices.Sort(keys)
	want := []string{}
	for i := range 10 {
		want = append(want, fmt.Sprintf("big/sub%d", i))
	}
	if err != nil || !slices.Equal(keys, want) {
		t.Fatalf("List(big) = %q, %v; want %q", keys, err, want)
	}
	if keys, err := s.List(ctx, "big/sub3", false); err != nil || len(keys) != 10000 {
		t.Fatalf("List(big/sub3) = %d keys, %v; want 10000", len(keys), err)
	}
	if keys, err := s.List(ctx, "small", true); err != nil || len(keys) != 10 {
		t.Fatalf("List(small, recursive) = %q, %v", keys, err)
	}
	if keys, err := s.List(ctx, "", false); err != nil || !slices.Equal(sorted(keys), []string{"big", "small"}) {
		t.Fatalf("List(root) = %q, %v; want big, small", keys, err)
	}

	var relpages int
	if err := raw.QueryRow(ctx, `SELECT relpages FROM pg_class WHERE oid = 'acme_storage'::regclass`).Scan(&relpages); err != nil {
		t.Fatal(err)
	}
	t.Logf("acme_storage: %d pages", relpages)

	prefixLen := len("caddy/big/") + 1
	cases := []struct {
		name    string
		sql     string
		types   string
		args    []any
		index   string
		analyze bool // false: not executed (it would change the data)
	}{
		{"List(big)", sqlList, "text, text, int", []any{"caddy/big/", "caddy/big0", prefixLen}, "acme_storage_key_c_idx", true},
		{"List(big), its range read first", sqlListHead, "text, text, int", []any{"caddy/big/", "caddy/big0", listRangeRead + 1}, "acme_storage_key_c_idx", true},
		{"List(small)", sqlListHead, "text, text, int", []any{"caddy/small/", "caddy/small0", listRangeRead + 1}, "acme_storage_key_c_idx", true},
		{"List(small, recursive)", sqlListRecursive, "text, text", []any{"caddy/small/", "caddy/small0"}, "acme_storage_key_c_idx", true},
		{"Exists(big)", sqlExists, "text, text, text", []any{"caddy/big", "caddy/big/", "caddy/big0"}, "acme_storage_key_c_idx", true},
		{"Stat(big)", sqlStat, "text, text, text", []any{"caddy/big", "caddy/big/", "caddy/big0"}, "acme_storage_key_c_idx", true},
		{"Store(big/sub3/k3) with its conflict check", sqlStoreChecked, "uuid, text, text, text[], text, text", []any{"6f1c2a7e-0d3b-4c55-9a8e-1b2c3d4e5f60", "caddy/big/sub3/k3", "v", "{caddy/big,caddy/big/sub3}", "caddy/big/sub3/k3/", "caddy/big/sub3/k30"}, "acme_storage_key_c_idx", false},
		{"Store(big) with its conflict check", sqlStoreChecked, "uuid, text, text, text[], text, text", []any{"6f1c2a7e-0d3b-4c55-9a8e-1b2c3d4e5f61", "caddy/big", "v", "{}", "caddy/big/", "caddy/big0"}, "acme_storage_key_c_idx", false},
		{"Load", sqlLoad, "text", []any{"caddy/small/f1"}, "acme_storage_key_key", true},
		{"Delete(small)", sqlDelete, "text, text, text", []any{"caddy/small", "caddy/small/", "caddy/small0"}, "acme_storage_key_c_idx", false},
	}
	conn, err := raw.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, mode := range []string{"force_generic_plan", "force_custom_plan"} {
		if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
			t.Fatal(err)
		}
		for i, c := range cases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				name := fmt.Sprintf("plan_%s_%d", mode, i)
				if _, err := conn.Exec(ctx, fmt.Sprintf("PREPARE %s(%s) AS %s", name, c.types, c.sql)); err != nil {
					t.Fatal(err)
				}
				defer conn.Exec(ctx, "DEALLOCATE "+name)
				opts := "FORMAT JSON"
				if c.analyze {
					opts = "ANALYZE, BUFFERS, FORMAT JSON"
				}
				var out string
				if err := conn.QueryRow(ctx, fmt.Sprintf("EXPLAIN (%s) EXECUTE %s(%s)", opts, name, literals(c.args))).Scan(&out); err != nil {
					t.Fatal(err)
				}
				checkPlan(t, out, c.index, c.analyze, relpages)
			})
		}
	}
}

// checkPlan asserts that the plan never scans acme_storage sequentially,
// uses index, and (analyzed) touched at most 5% of the table's pages.
func checkPlan(t *testing.T, out, index string, analyzed bool, relpages int) {
	t.Helper()
	var plans []struct {
		Plan planNode `json:"Plan"`
	}
	if err := json.Unmarshal([]byte(out), &plans); err != nil || len(plans) != 1 {
		t.Fatalf("parsing EXPLAIN output: %v\n%s", err, out)
	}
	var nodes []string
	usesIndex := false
	var walk func(n planNode)
	walk = func(n planNode) {
		nodes = append(nodes, n.NodeType+" "+n.IndexName+n.RelationName)
		if n.NodeType == "Seq Scan" && n.RelationName == "acme_storage" {
			t.Errorf("sequential scan of acme_storage:\n%s", out)
		}
		if n.IndexName == index {
			usesIndex = true
		}
		for _, c := range n.Plans {
			walk(c)
		}
	}
	root := plans[0].Plan
	walk(root)
	if !usesIndex {
		t.Errorf("plan does not use %s: %q\n%s", index, nodes, out)
	}
	if analyzed {
		blocks := root.SharedHit + root.SharedRead
		t.Logf("%d buffers; %q", blocks, nodes)
		if blocks*20 > relpages {
			t.Errorf("read %d buffers of a %d-page table\n%s", blocks, relpages, out)
		}
	}
}

type planNode struct {
	NodeType     string     `json:"Node Type"`
	RelationName string     `json:"Relation Name"`
	IndexName    string     `json:"Index Name"`
	SharedHit    int        `json:"Shared Hit Blocks"`
	SharedRead   int        `json:"Shared Read Blocks"`
	Plans        []planNode `json:"Plans"`
}

// literals renders args as SQL literals for EXECUTE.
func literals(args []any) string {
	parts := make([]string, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case string:
			parts[i] = "'" + strings.ReplaceAll(v, "'", "''") + "'"
		case int:
			parts[i] = strconv.Itoa(v)
		default:
			panic(fmt.Sprintf("literal of %T", a))
		}
	}
	return strings.Join(parts, ", ")
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
