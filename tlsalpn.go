package caddyacme

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(TLSALPN{})
}

// TLSALPN is a listener wrapper that answers the CA's TLS-ALPN-01 challenge
// connections (RFC 8737) for the acme app, including challenges another
// node started and only the shared storage knows, so that any node of a
// cluster may receive the CA's connection on port 443. It is what the
// `acme_challenge` handler is for HTTP-01.
//
// Caddy's TLS app answers such a connection itself before any certificate
// manager is asked, from the challenges of this process or from the TLS
// app's own storage under the TLS app's own issuers: it knows nothing of
// the acme app's issuer and storage, so without this wrapper only the node
// that placed the order can answer. The wrapper sees the connection before
// Caddy's TLS layer: it must come before the `tls` placeholder wrapper.
//
// It looks at the first TLS record of each connection (in the reading
// goroutine of the server, bounded by the deadlines the server sets). A
// ClientHello that offers exactly the ALPN protocol "acme-tls/1" with a
// server name the app allows, for which this process or the app's storage
// holds a TLS-ALPN-01 challenge, is answered with the challenge
// certificate, and the connection is closed. Every other connection reaches
// the next listener unchanged. Only DNS names are answered (not the
// reverse-DNS names of IP address identifiers, RFC 8738).
//
// JSON, in a server of the http app:
//
//	"listener_wrappers": [{"wrapper": "acme_tls_alpn"}, {"wrapper": "tls"}]
//
// Caddyfile (global options):
//
//	servers {
//		listener_wrappers {
//			acme_tls_alpn
//			tls
//		}
//	}
type TLSALPN struct {
	app    *App
	ctx    context.Context
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (TLSALPN) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.acme_tls_alpn",
		New: func() caddy.Module { return new(TLSALPN) },
	}
}

// Provision finds the acme app.
func (w *TLSALPN) Provision(ctx caddy.Context) error {
	app, err := configuredApp(ctx)
	if err != nil {
		return fmt.Errorf("acme_tls_alpn: %w", err)
	}
	w.app = app
	w.ctx = ctx
	w.logger = ctx.Logger()
	return nil
}

// WrapListener wraps ln so that its connections answer TLS-ALPN-01
// challenges.
func (w *TLSALPN) WrapListener(ln net.Listener) net.Listener {
	return &tlsALPNListener{Listener: ln, answer: w.challengeCert, logger: w.logger}
}

// challengeCert returns the TLS-ALPN-01 certificate for name, or nil when
// the app does not allow name or knows no TLS-ALPN-01 challenge for it.
func (w *TLSALPN) challengeCert(name string) *tls.Certificate {
	if w.app.rt.Allowed(name) != nil {
		return nil
	}
	chal, ok := certmagic.GetACMEChallenge(name)
	if !ok {
		ctx, cancel := context.WithTimeout(w.ctx, tlsALPNStorageTimeout)
		defer cancel()
		// under each issuer's key, as certmagic's Config.getACMEChallengeInfo
		// looks (the app's issuer; further CAs, if any, have their own)
		for _, iss := range w.app.magic.Issuers {
			var err error
			chal.Challenge, ok, err = loadChallenge(ctx, w.app.storage, iss.IssuerKey(), name)
			if err != nil {
				w.logger.Error("loading tls-alpn-01 challenge", zap.String("identifier", name),
					zap.String("issuer", iss.IssuerKey()), zap.Error(err))
				return nil
			}
			if ok {
				break
			}
		}
	}
	if !ok || chal.Type != acme.ChallengeTypeTLSALPN01 {
		return nil
	}
	cert, err := acmez.TLSALPN01ChallengeCert(chal.Challenge)
	if err != nil {
		w.logger.Error("making tls-alpn-01 challenge certificate", zap.String("identifier", name), zap.Error(err))
		return nil
	}
	return cert
}

// UnmarshalCaddyfile sets up the wrapper from Caddyfile tokens. Syntax:
//
//	acme_tls_alpn
func (w *TLSALPN) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume wrapper name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("acme_tls_alpn takes no block: configure the challenges in the global acme option")
	}
	return nil
}

// challengeTokenKey is the storage key under which certmagic's distributed
// solver keeps the challenge for identifier of the issuer with issuerKey:
// acme/<issuer key>/challenge_tokens/<identifier>.json. certmagic does not
// export it; this mirrors certmagic v0.25.6 solvers.go
// (distributedSolver.challengeTokensKey and challengeTokensPrefix) with
// account.go (storageKeyACMECAPrefix), as config.go
// (Config.getACMEChallengeInfo) builds it to read a challenge.
func challengeTokenKey(issuerKey, identifier string) string {
	return path.Join("acme", certmagic.StorageKeys.Safe(issuerKey), "challenge_tokens", certmagic.StorageKeys.Safe(identifier)+".json")
}

// loadChallenge loads the challenge that certmagic's distributed solver
// stored for identifier; ok is false if there is none.
func loadChallenge(ctx context.Context, s certmagic.Storage, issuerKey, identifier string) (chal acme.Challenge, ok bool, err error) {
	key := challengeTokenKey(issuerKey, identifier)
	data, err := s.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return chal, false, nil
	}
	if err != nil {
		return chal, false, fmt.Errorf("loading %s: %w", key, err)
	}
	if err := json.Unmarshal(data, &chal); err != nil {
		return chal, false, fmt.Errorf("decoding %s: %w", key, err)
	}
	return chal, true, nil
}

// tlsALPNListener wraps the connections it accepts in tlsALPNConn.
type tlsALPNListener struct {
	net.Listener
	answer func(name string) *tls.Certificate
	logger *zap.Logger
}

// Accept returns the next connection at once, wrapped: the connection is
// looked at on its first Read.
func (l *tlsALPNListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &tlsALPNConn{Conn: c, answer: l.answer, logger: l.logger}, nil
}

// tlsALPNConn answers a TLS-ALPN-01 challenge on its first Read, or replays
// what it read and then reads through. Its own fields are used by the
// reading goroutine only; everything but Read is the underlying
// connection's.
type tlsALPNConn struct {
	net.Conn
	answer func(name string) *tls.Certificate
	logger *zap.Logger

	inspected bool   // the first record was looked at
	buf       []byte // read from Conn, not yet returned
	err       error  // returned once buf is empty
	answered  bool   // a challenge was answered: every Read returns io.EOF
}

// Read reads the first record and answers a challenge on the first call,
// then returns what was read before reading from the connection.
func (c *tlsALPNConn) Read(p []byte) (int, error) {
	if !c.inspected {
		c.inspected = true
		c.inspect()
	}
	if c.answered {
		return 0, io.EOF
	}
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		if len(c.buf) == 0 {
			c.buf = nil
		}
		return n, nil
	}
	if c.err != nil {
		err := c.err
		c.err = nil
		return 0, err
	}
	return c.Conn.Read(p)
}

// inspect reads the first record into buf (and a read error into err) and,
// if it is a TLS-ALPN-01 challenge the wrapper can answer, answers it.
func (c *tlsALPNConn) inspect() {
	c.buf, c.err = readFirstRecord(c.Conn)
	if c.err != nil {
		return
	}
	hello := challengeHello(c.buf)
	if hello == nil {
		return
	}
	cert := c.answer(hello.name)
	if cert == nil {
		return
	}
	srv := tls.Server(&replayConn{Conn: c.Conn, buf: c.buf}, &tls.Config{
		Certificates:           []tls.Certificate{*cert},
		NextProtos:             []string{acmez.ACMETLS1Protocol},
		MinVersion:             tls.VersionTLS12,
		SessionTicketsDisabled: true,
	})
	fields := []zap.Field{
		zap.String("server_name", hello.name),
		zap.String("challenge", "tls-alpn-01"),
		zap.String("remote", c.RemoteAddr().String()),
	}
	// Handshake, not HandshakeContext: the deadlines the server set on
	// the connection bound it, and no goroutine watches a context
	if err := srv.Handshake(); err != nil {
		c.logger.Debug("challenge handshake failed", append(fields, zap.Error(err))...)
	} else {
		c.logger.Info("served key authentication certificate", fields...)
	}
	_ = c.Conn.Close()
	c.buf, c.err, c.answered = nil, nil, true
}

// readFirstRecord reads the first TLS record from r: the 5-byte header and,
// if the header is that of a handshake record of at most 16 KiB, the body.
// It returns what it read, all of it, and the read error if any (io.EOF,
// not io.ErrUnexpectedEOF, at the end of a short stream: the reader above
// sees the stream as it is).
func readFirstRecord(r io.Reader) ([]byte, error) {
	hdr := make([]byte, recordHeaderLen, recordHeaderLen+512)
	n, err := io.ReadFull(r, hdr)
	if err != nil {
		return hdr[:n], eof(err)
	}
	length := int(hdr[3])<<8 | int(hdr[4])
	if hdr[0] != recordTypeHandshake || hdr[1] != 3 || length > maxPlaintextRecord {
		return hdr, nil
	}
	rec := append(hdr, make([]byte, length)...)
	n, err = io.ReadFull(r, rec[recordHeaderLen:])
	return rec[:recordHeaderLen+n], eof(err)
}

// eof turns io.ReadFull's io.ErrUnexpectedEOF back into io.EOF.
func eof(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return io.EOF
	}
	return err
}

// challengeInfo is what matters in a challenge's ClientHello.
type challengeInfo struct {
	name string // the server name, lowercase, without a trailing dot
}

// challengeHello returns the server name of record if record is a whole
// ClientHello of a TLS-ALPN-01 challenge: a DNS server name and exactly the
// ALPN protocol "acme-tls/1". Else it returns nil.
func challengeHello(record []byte) *challengeInfo {
	if !bytes.Contains(record, acmeTLS1) {
		return nil // the common case: no parsing
	}
	hello := parseClientHello(record)
	if hello == nil || hello.ServerName == "" ||
		len(hello.SupportedProtos) != 1 || hello.SupportedProtos[0] != acmez.ACMETLS1Protocol {
		return nil
	}
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name == "" || strings.HasSuffix(name, ".arpa") || net.ParseIP(name) != nil {
		return nil
	}
	return &challengeInfo{name: name}
}

// parseClientHello parses the ClientHello in record with crypto/tls: a
// server handshake over the record alone, stopped once the hello is read.
// It returns nil if record is not a whole, valid ClientHello.
func parseClientHello(record []byte) *tls.ClientHelloInfo {
	var hello *tls.ClientHelloInfo
	srv := tls.Server(&replayConn{buf: record}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hello = h
			return nil, errHelloRead
		},
	})
	_ = srv.Handshake()
	return hello
}

// replayConn reads buf, then from Conn (io.EOF without a Conn); it writes
// to Conn (discards without one).
type replayConn struct {
	net.Conn // nil when parsing
	buf      []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	if c.Conn == nil {
		return 0, io.EOF
	}
	return c.Conn.Read(p)
}

func (c *replayConn) Write(p []byte) (int, error) {
	if c.Conn == nil {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *replayConn) Close() error {
	if c.Conn == nil {
		return nil
	}
	return c.Conn.Close()
}

func (c *replayConn) LocalAddr() net.Addr {
	if c.Conn == nil {
		return noAddr{}
	}
	return c.Conn.LocalAddr()
}

func (c *replayConn) RemoteAddr() net.Addr {
	if c.Conn == nil {
		return noAddr{}
	}
	return c.Conn.RemoteAddr()
}

func (c *replayConn) SetDeadline(t time.Time) error {
	if c.Conn == nil {
		return nil
	}
	return c.Conn.SetDeadline(t)
}

func (c *replayConn) SetReadDeadline(t time.Time) error {
	if c.Conn == nil {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *replayConn) SetWriteDeadline(t time.Time) error {
	if c.Conn == nil {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

// noAddr is the address of a replayConn without a connection.
type noAddr struct{}

func (noAddr) Network() string { return "replay" }
func (noAddr) String() string  { return "replay" }

// TLS record framing (RFC 8446 §5.1).
const (
	recordHeaderLen     = 5
	recordTypeHandshake = 22
	maxPlaintextRecord  = 1 << 14 // a ClientHello record is plaintext
)

// tlsALPNStorageTimeout bounds the storage read of a challenge.
const tlsALPNStorageTimeout = 5 * time.Second

var (
	// acmeTLS1 is the ALPN protocol of the TLS-ALPN-01 challenge.
	acmeTLS1 = []byte(acmez.ACMETLS1Protocol)

	// errHelloRead ends the handshake that parseClientHello uses to parse.
	errHelloRead = errors.New("client hello read")
)

// Interface guards
var (
	_ caddy.ListenerWrapper = (*TLSALPN)(nil)
	_ caddy.Provisioner     = (*TLSALPN)(nil)
	_ caddyfile.Unmarshaler = (*TLSALPN)(nil)
	_ net.Conn              = (*tlsALPNConn)(nil)
	_ net.Conn              = (*replayConn)(nil)
)
