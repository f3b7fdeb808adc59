package issuance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/caddyserver/certmagic"
)

// storageCheckTTL is how long a passed storage check is trusted: the
// orders and renewals of that span do not repeat it.
const storageCheckTTL = time.Minute

// storageCheckSize is how much the check writes: as much as certmagic's
// check, enough for a certificate chain and its key.
const storageCheckSize = 10 << 10

// storageCheck makes sure the storage can be written, read and deleted
// before an order or a renewal, so that a certificate is not lost (and
// ordered again, spending the CA's limits) because the storage refuses to
// keep it.
//
// certmagic makes the same check before every order and renewal (a Store,
// a Load and a Delete of 10 KiB: on a networked backend several round
// trips, on the file system a file written, read and removed; its code
// says it need not be made every time). The runtime turns certmagic's off
// (Config.DisableStorageCheck) and makes it itself before its orders and
// renewals, once a minute at most: a passed check is trusted for
// storageCheckTTL, a failed one is not, so every order after a failure
// checks again. One check runs at a time; orders meanwhile wait for its
// result (or their context). certmagic's own last-resort renewals (in
// the last 1% of a certificate's life, should the renewal scans not have
// renewed it) go without one.
type storageCheck struct {
	sem    chan struct{} // held while checking and while reading passed
	passed time.Time     // when the last check passed; zero: none yet
	now    func() time.Time
}

func newStorageCheck() *storageCheck {
	return &storageCheck{sem: make(chan struct{}, 1), now: time.Now}
}

// check returns nil if storage passed a check within storageCheckTTL, or
// passes one now; else the error, in certmagic's words.
func (c *storageCheck) check(ctx context.Context, storage certmagic.Storage) error {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting for the storage check: %w", ctx.Err())
	}
	defer func() { <-c.sem }()
	if !c.passed.IsZero() && c.now().Sub(c.passed) < storageCheckTTL {
		return nil
	}
	if err := probeStorage(ctx, storage); err != nil {
		return fmt.Errorf("failed storage check: %w - storage is probably misconfigured", err)
	}
	c.passed = c.now()
	return nil
}

// probeStorage writes random bytes under a random key, reads them back and
// deletes the key, as certmagic's Config.checkStorage does (its key
// pattern, rw_test_N, so that a storage lists the same stray keys).
func probeStorage(ctx context.Context, storage certmagic.Storage) error {
	contents := make([]byte, storageCheckSize)
	rand.Read(contents)
	key := "rw_test_" + strconv.FormatUint(binary.LittleEndian.Uint64(contents)>>1, 10)
	if err := storage.Store(ctx, key, contents); err != nil {
		return err
	}
	loaded, err := storage.Load(ctx, key)
	if err == nil && !bytes.Equal(contents, loaded) {
		err = fmt.Errorf("load yielded different value than was stored; expected %d bytes, got %d bytes of differing elements", len(contents), len(loaded))
	}
	// removed even when ctx has ended, within a bound of its own
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return errors.Join(err, storage.Delete(dctx, key))
}
