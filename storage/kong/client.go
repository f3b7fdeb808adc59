package kong

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// clients shares one client per connection settings among the storages
// of every loaded config.
var clients = backend.NewPool[*client]()

// client is a connection pool to one database, made on first use (so
// Provision does no network I/O), with the acme_storage table ensured once,
// and the listener of lock notifications.
type client struct {
	cfg    *pgxpool.Config
	logger *zap.Logger

	ready atomic.Pointer[pgxpool.Pool] // set once the schema is ensured

	mu     sync.Mutex // protects pool, closed
	pool   *pgxpool.Pool
	closed bool

	notify *notifier
}

func newClient(cfg *pgxpool.Config, logger *zap.Logger) *client {
	return &client{
		cfg:    cfg,
		logger: logger,
		notify: &notifier{cfg: cfg.ConnConfig, logger: logger},
	}
}

var errClosed = errors.New("storage client closed (config unloaded)")

// get returns the pool, creating it and the schema on first use. A failure
// is not remembered: the next call tries again.
func (c *client) get(ctx context.Context) (*pgxpool.Pool, error) {
	if p := c.ready.Load(); p != nil {
		return p, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	if p := c.ready.Load(); p != nil {
		return p, nil
	}
	if c.pool == nil {
		p, err := pgxpool.NewWithConfig(context.Background(), c.cfg)
		if err != nil {
			return nil, fmt.Errorf("creating connection pool: %w", err)
		}
		c.pool = p
	}
	if err := c.ensureSchema(ctx, c.pool); err != nil {
		return nil, err
	}
	c.ready.Store(c.pool)
	return c.pool, nil
}

// ensureSchema creates Kong's acme_storage table and its ttl index with
// Kong's DDL if they are missing, and our byte-order key index. Without the
// privilege to create that index (the table belongs to another role) it
// logs a warning and goes on: everything works, but List and prefix
// queries scan.
func (c *client) ensureSchema(ctx context.Context, pool *pgxpool.Pool) error {
	var table, ttlIdx, keyIdx bool
	if err := pool.QueryRow(ctx, sqlSchemaState).Scan(&table, &ttlIdx, &keyIdx); err != nil {
		return fmt.Errorf("checking table acme_storage: %w", err)
	}
	if !table || !ttlIdx {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for _, q := range []string{sqlSchemaLock, ddlTable, ddlTTLIdx} {
				if _, err := tx.Exec(ctx, q); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("creating table acme_storage: %w", err)
		}
		if !table {
			c.logger.Info("created table acme_storage (Kong's schema)")
		}
	}
	if !keyIdx {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for _, q := range []string{sqlSchemaLock, ddlKeyIdx} {
				if _, err := tx.Exec(ctx, q); err != nil {
					return err
				}
			}
			return nil
		})
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "42501": // insufficient_privilege
			c.logger.Warn("cannot create index acme_storage_key_c_idx: listing keys scans the table; create it as the table's owner",
				zap.String("sql", ddlKeyIdx), zap.Error(err))
		case err != nil:
			return fmt.Errorf("creating index acme_storage_key_c_idx: %w", err)
		}
	}
	return nil
}

// Destruct closes the pool and the listener; the last storage using the
// client calls it through the pool's Release.
func (c *client) Destruct() error {
	c.mu.Lock()
	c.closed = true
	pool := c.pool
	c.mu.Unlock()
	c.notify.close()
	if pool != nil {
		pool.Close()
	}
	return nil
}

// notifier keeps one connection LISTENing on notifyChannel while any Lock
// waits, and wakes the waiters of the lock key a notification names. It
// starts on the first wait and runs until the client is destroyed,
// reconnecting after errors; waiters also poll, so a lost notification
// delays a handoff but never loses it.
type notifier struct {
	cfg    *pgx.ConnConfig
	logger *zap.Logger

	mu      sync.Mutex // protects waiters, running, closed, cancel, done
	waiters map[string]map[chan struct{}]struct{}
	running bool
	closed  bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// subscribe registers a waiter for the lock row key: the returned channel
// receives a value when a notification names key, and whenever the
// listener (re)starts listening, since a release may have been missed
// before. Call unsubscribe when done waiting.
func (n *notifier) subscribe(key string) (ch chan struct{}, unsubscribe func()) {
	ch = make(chan struct{}, 1)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.waiters == nil {
		n.waiters = make(map[string]map[chan struct{}]struct{})
	}
	set := n.waiters[key]
	if set == nil {
		set = make(map[chan struct{}]struct{})
		n.waiters[key] = set
	}
	set[ch] = struct{}{}
	if !n.running && !n.closed {
		ctx, cancel := context.WithCancel(context.Background())
		n.running, n.cancel, n.done = true, cancel, make(chan struct{})
		go n.run(ctx, n.done)
	}
	return ch, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(set, ch)
		if len(n.waiters[key]) == 0 {
			delete(n.waiters, key)
		}
	}
}

// wake signals the waiters of key, or every waiter when all is true.
func (n *notifier) wake(key string, all bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	signal := func(set map[chan struct{}]struct{}) {
		for ch := range set {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	if !all {
		signal(n.waiters[key])
		return
	}
	for _, set := range n.waiters {
		signal(set)
	}
}

func (n *notifier) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	defer func() {
		if r := recover(); r != nil {
			n.logger.Error("panic in lock notification listener",
				zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			n.mu.Lock()
			n.running = false
			n.mu.Unlock()
		}
	}()
	backoff := 100 * time.Millisecond
	for {
		listened, err := n.listen(ctx)
		if ctx.Err() != nil {
			return
		}
		if listened {
			backoff = 100 * time.Millisecond
		}
		n.logger.Warn("lock notification listener disconnected; waiters poll until it reconnects",
			zap.Duration("retry_in", backoff), zap.Error(err))
		n.wake("", true)
		if backend.Wait(ctx, backoff) != nil {
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// listen connects, LISTENs and dispatches notifications until an error or
// ctx ends; listened reports whether LISTEN succeeded.
func (n *notifier) listen(ctx context.Context) (listened bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, n.cfg.Copy())
	if err != nil {
		return false, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return false, err
	}
	n.wake("", true) // releases before LISTEN went unheard
	for {
		note, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true, err
		}
		n.wake(note.Payload, note.Payload == "")
	}
}

// close stops the listener and waits for it.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	cancel, done, running := n.cancel, n.done, n.running
	n.mu.Unlock()
	if running {
		cancel()
		<-done
	}
}
