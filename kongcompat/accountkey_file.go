package kongcompat

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// The account key file (--account-key-file) holds a private key: it is
// created with mode 0600, never through a symbolic link, and never over
// an existing file (one that already holds exactly Kong's key, readable
// by its owner only, is left as it is, so that the command can be run
// again).

// checkAccountKeyFile refuses, before anything is done, a path the key
// could not safely be written to.
func checkAccountKeyFile(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		dir, err := os.Stat(filepath.Dir(path))
		if err != nil {
			return fmt.Errorf("--account-key-file %s: its directory: %w", path, err)
		}
		if !dir.IsDir() {
			return fmt.Errorf("--account-key-file %s: %s is not a directory", path, filepath.Dir(path))
		}
		return nil
	case err != nil:
		return fmt.Errorf("--account-key-file %s: %w", path, err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("--account-key-file %s is a symbolic link: refusing to write a private key through it (name the file itself)", path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("--account-key-file %s exists and is not a regular file: refusing to write a private key to it", path)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("--account-key-file %s exists (mode %04o, readable by others): refusing to overwrite it or to leave a private key in it; remove it or name a new file", path, fi.Mode().Perm())
	}
	return nil // an existing private file: writeAccountKeyFile compares it
}

// writeAccountKeyFile creates path with keyPEM, mode 0600. same is true
// when path already held exactly keyPEM (and is private); any other
// existing file is refused.
func writeAccountKeyFile(path string, keyPEM []byte) (same bool, err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600) // #nosec G304 -- the user's own argument
	if errors.Is(err, fs.ErrExist) {
		return sameAccountKeyFile(path, keyPEM)
	}
	if err != nil {
		return false, fmt.Errorf("--account-key-file: %w", err)
	}
	if _, err := f.Write(keyPEM); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return false, fmt.Errorf("--account-key-file: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return false, fmt.Errorf("--account-key-file: writing %s: %w", path, err)
	}
	return false, nil
}

// sameAccountKeyFile checks an existing path: a private regular file
// holding exactly keyPEM is fine; anything else is refused.
func sameAccountKeyFile(path string, keyPEM []byte) (bool, error) {
	if err := checkAccountKeyFile(path); err != nil {
		return false, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0) // #nosec G304 -- the user's own argument
	if err != nil {
		return false, fmt.Errorf("--account-key-file %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 || fi.Size() > maxSmallFileSize {
		return false, fmt.Errorf("--account-key-file %s exists: refusing to overwrite it; remove it or name a new file", path)
	}
	have, err := io.ReadAll(io.LimitReader(f, maxSmallFileSize))
	if err != nil || !bytes.Equal(have, keyPEM) {
		return false, fmt.Errorf("--account-key-file %s exists and holds something else than Kong's account key: refusing to overwrite it; remove it or name a new file", path)
	}
	return true, nil
}
