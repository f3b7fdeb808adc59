package testenv

import (
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Relay forwards TCP connections from a fixed 127.0.0.1 port to target; it
// can be closed (listener and every connection) and opened again on the
// same port. It stands between a client and a real server, which it does
// not interpret.
type Relay struct {
	t testing.TB
	// Addr is the relay's address, 127.0.0.1:<port>, the same after Close
	// and Open.
	Addr   string
	target string

	mu       sync.Mutex // protects ln and conns
	ln       net.Listener
	conns    map[net.Conn]struct{}
	accepted atomic.Int64 // connections accepted, ever
}

// NewRelay starts a relay to target on a free port; it is closed when
// the test ends.
func NewRelay(t testing.TB, target string) *Relay {
	t.Helper()
	r := &Relay{t: t, Addr: "127.0.0.1:" + strconv.Itoa(FreePort(t)), target: target, conns: map[net.Conn]struct{}{}}
	r.Open()
	t.Cleanup(r.Close)
	return r
}

// Open listens on the relay's port and forwards what it accepts.
func (r *Relay) Open() {
	r.t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port was just given up by close
		if ln, err = net.Listen("tcp", r.Addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatalf("relay: listening on %s again: %v", r.Addr, err)
	}
	r.mu.Lock()
	r.ln = ln
	r.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.accepted.Add(1)
			go r.forward(c)
		}
	}()
}

func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln == nil {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) forward(c net.Conn) {
	up, err := net.DialTimeout("tcp", r.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !r.track(c) || !r.track(up) {
		c.Close()
		up.Close()
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
	c.Close()
	up.Close()
	r.mu.Lock()
	delete(r.conns, c)
	delete(r.conns, up)
	r.mu.Unlock()
}

// Close stops listening and cuts every relayed connection.
func (r *Relay) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
}

// Accepted returns how many connections the relay accepted since it was
// made.
func (r *Relay) Accepted() int64 { return r.accepted.Load() }
