package kongcompat

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Size limits of what the kong adapter and `caddy acme-migrate` read. Each
// input is read through its limit, so a huge or endless file (/dev/zero)
// is refused at once, with a message naming the limit, instead of being
// read into memory.
const (
	// MaxKongConfigSize is the largest Kong configuration (declarative
	// file or Admin API plugin JSON) the kong adapter and --from accept:
	// 16 MiB. Kong's own Admin API refuses a declarative config over 10 MB
	// by default (nginx_admin_client_max_body_size).
	MaxKongConfigSize = 16 << 20

	// MaxKongConfSize is the largest kong.conf read (--kong-conf,
	// $KONG_CONF, the kong_conf adapter option): 1 MiB.
	MaxKongConfSize = 1 << 20

	// MaxCaddyConfigSize is the largest Caddy config --config accepts:
	// 64 MiB.
	MaxCaddyConfigSize = 64 << 20

	// maxSmallFileSize bounds the small files read besides: a Kubernetes
	// service account token, an existing --account-key-file.
	maxSmallFileSize = 1 << 20
)

// TooLargeError reports an input over its size limit.
type TooLargeError struct {
	What  string // what the input is, e.g. "--from (Kong's configuration)"
	Path  string // the file, if the input is one
	Limit int64  // in bytes
}

func (e *TooLargeError) Error() string {
	s := e.What
	if e.Path != "" {
		s += " " + e.Path
	}
	return fmt.Sprintf("%s: larger than %s, the limit", s, sizeString(e.Limit))
}

func sizeString(n int64) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// readFileLimited reads the file path, refusing it with a *TooLargeError
// once it gives more than limit bytes (whatever its size says: /dev/zero
// and pipes have none).
func readFileLimited(path string, limit int64, what string) ([]byte, error) {
	f, err := os.Open(path) // #nosec G304 -- the path is the user's own argument
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > limit {
		return nil, &TooLargeError{What: what, Path: path, Limit: limit}
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, &TooLargeError{What: what, Path: path, Limit: limit}
	}
	return data, nil
}

// isTooLarge reports whether err is a *TooLargeError.
func isTooLarge(err error) bool {
	var tl *TooLargeError
	return errors.As(err, &tl)
}
