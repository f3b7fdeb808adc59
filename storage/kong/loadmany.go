package kong

import (
	"context"
	"fmt"
	"io/fs"
)

// LoadMany loads keys in one query: the renewal scan of the acme app reads
// certificates this way. values[i] and errs[i] are keys[i]'s, as Load would
// return them.
func (s *Storage) LoadMany(ctx context.Context, keys []string) ([][]byte, []error) {
	values, errs := make([][]byte, len(keys)), make([]error, len(keys))
	cleaned := make([]string, len(keys))
	rowKeys := make([]string, 0, len(keys))
	for i, key := range keys {
		k, err := cleanKey(key)
		switch {
		case err != nil:
			errs[i] = fmt.Errorf("loading %s: %w: %w", key, err, fs.ErrNotExist)
		case k == "":
			errs[i] = fmt.Errorf("loading the root: %w", fs.ErrNotExist)
		default:
			cleaned[i] = k
			rowKeys = append(rowKeys, s.prefix+k)
		}
	}
	fail := func(err error) ([][]byte, []error) {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = fmt.Errorf("loading %s: %w", cleaned[i], err)
			}
		}
		return values, errs
	}
	if len(rowKeys) == 0 {
		return values, errs
	}
	pool, err := s.client.get(ctx)
	if err != nil {
		return fail(err)
	}
	rows, err := pool.Query(ctx, sqlLoadMany, rowKeys)
	if err != nil {
		return fail(err)
	}
	found := make(map[string][]byte, len(rowKeys))
	for rows.Next() {
		var key string
		var text []byte
		if err := rows.Scan(&key, &text); err != nil {
			rows.Close()
			return fail(err)
		}
		found[key] = text
	}
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	for i, k := range cleaned {
		if errs[i] != nil {
			continue
		}
		text, ok := found[s.prefix+k]
		if !ok {
			errs[i] = fmt.Errorf("loading %s: %w", k, fs.ErrNotExist)
			continue
		}
		v, err := decodeValue(text)
		if err == nil {
			v, err = s.rt.Sealer.Open(k, v)
		}
		if err != nil {
			errs[i] = fmt.Errorf("loading %s: %w", k, err)
			continue
		}
		values[i] = v
	}
	return values, errs
}
