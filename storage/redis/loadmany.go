package redis

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	goredis "github.com/redis/go-redis/v9"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// LoadMany loads keys in one pipeline (one round trip per server): the
// renewal scan of the acme app reads certificates this way. values[i] and
// errs[i] are keys[i]'s, as Load would return them.
func (s *Storage) LoadMany(ctx context.Context, keys []string) ([][]byte, []error) {
	values, errs := make([][]byte, len(keys)), make([]error, len(keys))
	cleaned := make([]string, len(keys))
	cmds := make([]*goredis.StringCmd, len(keys))
	_, err := s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, key := range keys {
			cleaned[i] = backend.Clean(key)
			cmds[i] = p.HGet(ctx, s.valueKey(cleaned[i]), fieldValue)
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		// a pipeline error is the first command's; each command has its own
		for i := range cmds {
			if cmds[i].Err() == nil {
				continue
			}
			if !errors.Is(cmds[i].Err(), goredis.Nil) {
				errs[i] = fmt.Errorf("loading %s: %w", cleaned[i], cmds[i].Err())
			}
		}
	}
	for i, cmd := range cmds {
		if errs[i] != nil {
			continue
		}
		data, err := cmd.Bytes()
		switch {
		case errors.Is(err, goredis.Nil):
			errs[i] = fmt.Errorf("loading %s: %w", cleaned[i], fs.ErrNotExist)
		case err != nil:
			errs[i] = fmt.Errorf("loading %s: %w", cleaned[i], err)
		default:
			if values[i], err = s.rt.Sealer.Open(cleaned[i], data); err != nil {
				errs[i] = fmt.Errorf("loading %s: %w", cleaned[i], err)
			}
		}
	}
	return values, errs
}
