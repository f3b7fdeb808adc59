package issuance

import (
	"net"
	"syscall"
	"time"
)

// peerWatch tells a handshake waiting for a certificate whether its client
// hung up: a client that gave up on a queued order must not keep it in
// the queue (jobs.leave drops it). Go's TLS server does not notice on its
// own: it is inside GetCertificate, not reading. The connection is peeked
// at (MSG_PEEK: nothing is consumed) every peerPollInterval; a connection
// that cannot be peeked at (not a socket, or a wrapper that hides it) is
// never reported gone, and the handshake waits until IssueTimeout as
// before.
type peerWatch struct {
	raw    syscall.RawConn // nil: cannot watch
	ticker *time.Ticker
}

const peerPollInterval = 250 * time.Millisecond

// newPeerWatch watches conn (which may be nil).
func newPeerWatch(conn net.Conn) *peerWatch {
	for conn != nil {
		if sc, ok := conn.(syscall.Conn); ok {
			raw, err := sc.SyscallConn()
			if err != nil {
				return &peerWatch{}
			}
			return &peerWatch{raw: raw}
		}
		u, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		conn = u.NetConn()
	}
	return &peerWatch{}
}

// tick returns a channel that ticks every peerPollInterval, or nil (never)
// when the connection cannot be watched.
func (p *peerWatch) tick() <-chan time.Time {
	if p.raw == nil {
		return nil
	}
	if p.ticker == nil {
		p.ticker = time.NewTicker(peerPollInterval)
	}
	return p.ticker.C
}

// gone reports whether the client closed its side of the connection (or
// reset it); it stops the ticker when so.
func (p *peerWatch) gone() bool {
	if p.raw == nil || !peerClosed(p.raw) {
		return false
	}
	p.ticker.Stop()
	return true
}
