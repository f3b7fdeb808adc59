//go:build unix

package issuance

import (
	"errors"
	"syscall"
)

// peerClosed peeks at the socket without blocking or consuming: a read of
// 0 bytes is the client's FIN, ECONNRESET its reset.
func peerClosed(raw syscall.RawConn) bool {
	closed := false
	err := raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = (n == 0 && err == nil) || errors.Is(err, syscall.ECONNRESET)
		return true
	})
	return err == nil && closed
}
