package testenv

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	goredis "github.com/redis/go-redis/v9"
)

func TestRedis(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		opts RedisOptions
	}{
		{"plain", RedisOptions{}},
		{"password", RedisOptions{Password: "s3cret pass"}},
		{"acl", RedisOptions{ACLUser: "caddy", ACLPass: "acl-pass"}},
		{"tls", RedisOptions{TLS: true}},
		{"tls-client-auth", RedisOptions{TLS: true, TLSClientAuth: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := StartRedis(t, tc.opts)
			c := r.Client(t)
			if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v\n%s", err, r.Log())
			}
			if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
				t.Fatalf("GET = %q, %v", got, err)
			}
			if tc.opts.Password != "" || tc.opts.ACLUser != "" {
				anon := goredis.NewClient(&goredis.Options{Addr: r.Addr, TLSConfig: r.TLSConfig(t)})
				defer anon.Close()
				if err := anon.Ping(ctx).Err(); err == nil {
					t.Fatal("PING without credentials succeeded")
				}
			}
			if tc.opts.TLS {
				plain := goredis.NewClient(&goredis.Options{Addr: r.Addr, MaxRetries: -1})
				defer plain.Close()
				if err := plain.Ping(ctx).Err(); err == nil {
					t.Fatal("PING without TLS succeeded")
				}
			}
		})
	}
}

func TestRedisRestartAppendOnly(t *testing.T) {
	ctx := context.Background()
	r := StartRedis(t, RedisOptions{AppendOnly: true})
	c := r.Client(t)
	if err := c.Set(ctx, "kept", "yes", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.Restart(t)
	if got, err := c.Get(ctx, "kept").Result(); err != nil || got != "yes" {
		t.Fatalf("GET after restart = %q, %v", got, err)
	}
}

// TestRedisStopStart: a stopped server refuses connections, and Start
// brings it back on the same address with its append-only data.
func TestRedisStopStart(t *testing.T) {
	ctx := context.Background()
	r := StartRedis(t, RedisOptions{AppendOnly: true})
	c := r.Client(t)
	if err := c.Set(ctx, "kept", "yes", 0).Err(); err != nil {
		t.Fatal(err)
	}
	addr := r.Addr
	r.Stop()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded while the server is stopped")
	}
	r.Start(t)
	if r.Addr != addr {
		t.Fatalf("address after Start = %s, want %s", r.Addr, addr)
	}
	if got, err := c.Get(ctx, "kept").Result(); err != nil || got != "yes" {
		t.Fatalf("GET after Start = %q, %v", got, err)
	}
}

func TestRedisCluster(t *testing.T) {
	ctx := context.Background()
	c := StartRedisCluster(t)
	if len(c.Addrs) != 3 {
		t.Fatalf("Addrs = %v", c.Addrs)
	}
	client := c.Client(t)
	// keys in many slots, hence on every master
	for i := range 64 {
		k := "key" + strings.Repeat("x", i)
		if err := client.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v\n%s", k, err, c.Log())
		}
	}
	var masters atomic.Int32 // ForEachMaster runs the function concurrently
	err := client.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		n, err := m.DBSize(ctx).Result()
		if err == nil && n > 0 {
			masters.Add(1)
		}
		return err
	})
	if err != nil || masters.Load() != 3 {
		t.Fatalf("keys on %d masters (%v), want 3", masters.Load(), err)
	}
}

func TestRedisSentinel(t *testing.T) {
	ctx := context.Background()
	s := StartRedisSentinel(t)
	c := goredis.NewFailoverClient(&goredis.FailoverOptions{MasterName: s.MasterName, SentinelAddrs: s.SentinelAddrs})
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx, 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got := s.MasterAddr(t); got != s.Master.Addr {
		t.Fatalf("master is %s, want %s", got, s.Master.Addr)
	}
	s.Failover(t)
	if got := s.MasterAddr(t); got != s.Replica.Addr {
		t.Fatalf("master after failover is %s, want the former replica %s", got, s.Replica.Addr)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET after failover = %q, %v", got, err)
	}
}
