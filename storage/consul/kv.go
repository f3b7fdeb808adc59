package consul

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// Store puts value at key, replacing any previous value atomically.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	k, err := fileKey(key)
	if err != nil {
		return fmt.Errorf("storing: %w", err)
	}
	sealed := s.rt.Sealer.Seal(k, value)
	small := len(sealed) <= txnValueMax
	if idx, ok := s.st.known.Get(k); ok && small {
		// overwrite: k still at index idx is a value, unchanged since, so
		// the conflict check has nothing to find (backend.Known)
		if written, err := s.set(ctx, k, sealed, idx, nil); written || err != nil {
			return err
		}
		s.st.known.Forget(k)
	}
	if small && len(sealed) <= inlineMax {
		// the directories above are checked in the write's transaction
		if err := s.checkNotDir(ctx, k); err != nil {
			return err
		}
		// Should it replace a large value, that value's chunks stay
		// (unreachable) until the key's next large Store or its Delete.
		_, err := s.set(ctx, k, sealed, 0, backend.Parents(k))
		return err
	}
	if err := s.checkConflict(ctx, k); err != nil {
		return err
	}
	if len(sealed) > inlineMax {
		return s.storeChunked(ctx, k, sealed, len(value))
	}
	// one plain PUT: a transaction's body (base64) would be too large
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if _, err := s.client.KV().Put(&api.KVPair{Key: s.dataKey(k), Value: sealed, Flags: nowFlags()},
		(&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return s.fail("storing", k, err)
	}
	return nil
}

// set writes the value sealed (at most txnValueMax) at k in one
// transaction, whose answer gives the pair's new ModifyIndex (remembered
// for the next overwrite). With index > 0 the transaction first checks
// that k is still at that ModifyIndex, atomically: if k changed or went
// away meanwhile, nothing is written and written is false. It first checks
// that none of parents (the directories above k) is a value, atomically
// with the write: if one is, nothing is written and the error is
// backend.ErrUnderValue.
func (s *Storage) set(ctx context.Context, k string, sealed []byte, index uint64, parents []string) (written bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	key := s.dataKey(k)
	ops := make(api.TxnOps, 0, len(parents)+2)
	for _, p := range parents {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: s.dataKey(p)}})
	}
	if index > 0 {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: index}})
	}
	ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: sealed, Flags: nowFlags()}})
	ok, resp, _, err := s.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	switch {
	case err != nil:
		return false, s.fail("storing", k, err)
	case !ok:
		if p, found := failedCheck(resp, parents); found {
			return false, backend.ErrUnderValue(k, p)
		}
		if index > 0 {
			return false, nil
		}
		return false, s.fail("storing", k, txnErrors(resp))
	}
	// the set's is the last result (a check-not-exists of a missing key
	// gives none)
	s.st.known.Set(k, inlineIndex(resultAt(resp, len(resp.Results)-1)))
	return true, nil
}

// checkConflict refuses to store k below a value (backend.ErrUnderValue)
// or over a directory (backend.ErrIsDir), as Caddy's file storage does: one
// transaction reading the directories above k (if any), and at the same
// time one listing of k's direct children (empty unless k is a directory).
// It is a check before the write, not a transaction with it: two nodes
// storing "a" and "a/b" at the same moment can both succeed. Store makes it
// for values too large for a transaction; a value that fits has only the
// listing made first (checkNotDir), the directories above being checked
// in its write's transaction (set).
func (s *Storage) checkConflict(ctx context.Context, k string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var under error
	var wg sync.WaitGroup
	if parents := backend.Parents(k); len(parents) > 0 {
		wg.Go(func() { under = s.checkParents(ctx, k, parents) })
	}
	err := s.checkNotDir(ctx, k)
	wg.Wait()
	if under != nil {
		return under
	}
	return err
}

// checkNotDir refuses to store k over a directory (backend.ErrIsDir): one
// listing of k's direct children.
func (s *Storage) checkNotDir(ctx context.Context, k string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	base := s.dirKey(k)
	keys, _, err := s.client.KV().Keys(base, "/", (&api.QueryOptions{}).WithContext(ctx))
	switch {
	case err != nil:
		return s.fail("storing", k, err)
	case len(children(keys, base)) > 0:
		return backend.ErrIsDir(k)
	}
	return nil
}

// failedCheck returns the first of parents whose check-not-exists (the
// first len(parents) operations) failed a transaction because the key
// exists (Consul's `key "…" exists`; not an ACL denial), if one did.
func failedCheck(resp *api.TxnResponse, parents []string) (string, bool) {
	if resp == nil {
		return "", false
	}
	first := -1
	for _, e := range resp.Errors {
		if e != nil && e.OpIndex < len(parents) && strings.HasSuffix(e.What, "\" exists") && (first < 0 || e.OpIndex < first) {
			first = e.OpIndex
		}
	}
	if first < 0 {
		return "", false
	}
	return parents[first], true
}

// checkParents refuses to store k below one of its parents that is a value.
func (s *Storage) checkParents(ctx context.Context, k string, parents []string) error {
	ops := make(api.TxnOps, len(parents))
	for i, p := range parents {
		ops[i] = &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetOrEmpty, Key: s.dataKey(p)}}
	}
	ok, resp, _, err := s.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err == nil && !ok {
		err = txnErrors(resp)
	}
	if err != nil {
		return s.fail("storing", k, err)
	}
	for i, p := range parents {
		// get-or-empty answers a missing key with an empty pair
		// (no index); a stored value has been modified at least once
		if pair := resultAt(resp, i); pair != nil && pair.ModifyIndex != 0 {
			return backend.ErrUnderValue(k, p)
		}
	}
	return nil
}

// storeChunked stores a sealed value larger than inlineMax as chunks and a
// manifest (see the type's doc comment).
func (s *Storage) storeChunked(ctx context.Context, k string, sealed []byte, plainLen int) error {
	n := (len(sealed) + chunkSize - 1) / chunkSize
	if n > maxChunks {
		return fmt.Errorf("storing %s: value of %d bytes is larger than consul storage's limit of %d bytes", k, plainLen, maxChunks*chunkSize)
	}
	var lastErr error
	for range 5 {
		gen := newGen()
		ops := make(api.TxnOps, 0, n+2)
		for i := range n {
			chunk := sealed[i*chunkSize : min((i+1)*chunkSize, len(sealed))]
			idx, err := s.putChunk(ctx, s.chunkKey(k, gen, i), chunk)
			if err != nil {
				return s.fail("storing", k, err)
			}
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: s.chunkKey(k, gen, i), Index: idx}})
		}
		m := manifest{gen: gen, chunks: n, size: len(sealed), plain: plainLen}
		ops = append(ops,
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetOrEmpty, Key: s.dataKey(k)}},
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: s.dataKey(k), Value: []byte(m.String()), Flags: nowFlags() | flagChunked}},
		)
		tctx, cancel := context.WithTimeout(ctx, s.timeout)
		ok, resp, _, err := s.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(tctx))
		cancel()
		if err != nil {
			return s.fail("storing", k, err)
		}
		if !ok {
			// A chunk vanished: a concurrent Delete of this key (or a
			// cleanup that took this attempt for abandoned) removed it.
			// Write everything again, after it.
			lastErr = txnErrors(resp)
			continue
		}
		replaced := ""
		if old := resultAt(resp, n); old != nil && old.Flags&flagChunked != 0 {
			if om, err := parseManifest(old.Value); err == nil {
				replaced = om.gen
			}
		}
		var published uint64
		if p := resultAt(resp, n+1); p != nil {
			published = p.ModifyIndex
		}
		s.deleteOldChunks(ctx, k, gen, replaced, published)
		return nil
	}
	return s.fail("storing", k, fmt.Errorf("chunks kept being removed by concurrent writes: %w", lastErr))
}

// putChunk writes one chunk and returns its modify index.
func (s *Storage) putChunk(ctx context.Context, key string, chunk []byte) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ok, resp, _, err := s.client.Txn().Txn(api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: chunk}}},
		(&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, txnErrors(resp)
	}
	pair := resultAt(resp, 0)
	if pair == nil {
		return 0, errors.New("consul returned no result for a chunk write")
	}
	return pair.ModifyIndex, nil
}

// deleteOldChunks removes, after generation gen of k was published at
// modify index published, the chunks no value refers to any more: those of
// the value it replaced (replaced, if that was chunked), and those older
// than abandonedAfter (of replaced values whose generation is unknown, or
// of writers that died midway) as long as gen is still the published value.
// Younger chunks may be a concurrent large Store's, still being written.
// Best effort: what is left is removed later.
func (s *Storage) deleteOldChunks(ctx context.Context, k, gen, replaced string, published uint64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	own := s.ownChunks(k)
	var err error
	if replaced != "" && replaced != gen {
		// Published once and now replaced: nobody can publish it again.
		_, err = s.client.KV().DeleteTree(own+replaced+".", (&api.WriteOptions{}).WithContext(ctx))
	}
	if err == nil && published != 0 {
		var keys []string
		keys, _, err = s.client.KV().Keys(own, "", (&api.QueryOptions{}).WithContext(ctx))
		ops := api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: s.dataKey(k), Index: published}}}
		seen := map[string]bool{gen: true, replaced: true}
		for _, key := range keys {
			g, _, _ := strings.Cut(strings.TrimPrefix(key, own), ".")
			if !seen[g] && len(ops) < maxTxnOps && time.Since(genTime(g)) > s.abandonedAfter() {
				seen[g] = true
				ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDeleteTree, Key: own + g + "."}})
			}
		}
		if err == nil && len(ops) > 1 {
			// Rolled back if another value was published meanwhile: fine,
			// its writer cleans up.
			_, _, _, err = s.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		}
	}
	if err != nil {
		s.logger.Warn("removing chunks of replaced values", zap.String("key", k), zap.Error(err))
	}
}

// abandonedAfter is how old chunks of an unpublished generation must be to
// be taken for abandoned: longer than a writer may take to write all its
// chunks and publish them, each request taking up to the timeout.
func (s *Storage) abandonedAfter() time.Duration {
	return (maxChunks + 2) * s.timeout
}

// newGen names a new generation of chunks: its creation time (Unix
// milliseconds) and a random part.
func newGen() string {
	return strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + backend.Token()[:8]
}

// genTime returns when generation g was created (zero if unknown, which
// counts as long ago).
func genTime(g string) time.Time {
	ms, _, _ := strings.Cut(g, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

// Load returns the value at key, or an error wrapping fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	k, err := fileKey(key)
	if err != nil {
		return nil, fmt.Errorf("loading: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	pair, _, err := s.client.KV().Get(s.dataKey(k), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, s.fail("loading", k, err)
	}
	if pair == nil {
		return nil, notExist("loading", k)
	}
	s.st.known.Set(k, inlineIndex(pair))
	return s.openPair(ctx, k, pair)
}

// loadChunks reads the chunks a manifest names. If they are gone, the
// value was replaced meanwhile: it reads the key again.
func (s *Storage) loadChunks(ctx context.Context, k string, pair *api.KVPair) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		if pair.Flags&flagChunked == 0 {
			return pair.Value, nil
		}
		m, err := parseManifest(pair.Value)
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", k, err)
		}
		chunks, _, err := s.client.KV().List(s.ownChunks(k)+m.gen+".", (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, s.fail("loading", k, err)
		}
		if len(chunks) == m.chunks {
			slices.SortFunc(chunks, func(a, b *api.KVPair) int { return strings.Compare(a.Key, b.Key) })
			data := make([]byte, 0, m.size)
			for _, c := range chunks {
				data = append(data, c.Value...)
			}
			if len(data) == m.size {
				return data, nil
			}
		}
		again, _, err := s.client.KV().Get(s.dataKey(k), (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, s.fail("loading", k, err)
		}
		if again == nil {
			return nil, notExist("loading", k)
		}
		if again.ModifyIndex == pair.ModifyIndex || attempt >= 5 {
			return nil, fmt.Errorf("loading %s: value is incomplete: %d of its %d chunks found", k, len(chunks), m.chunks)
		}
		pair = again
	}
}

// Delete removes key and everything under it. A missing key is not an
// error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	k, err := dirKey(key)
	if err != nil {
		return fmt.Errorf("deleting: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var ops api.TxnOps
	if k == "" {
		ops = api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVDeleteTree, Key: s.prefix + "/"}},
			{KV: &api.KVTxnOp{Verb: api.KVDeleteTree, Key: s.prefix + chunksSuffix + "/"}},
		}
	} else {
		ops = api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVDeleteTree, Key: s.dataKey(k) + "/"}},
			{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: s.dataKey(k)}},
			{KV: &api.KVTxnOp{Verb: api.KVDeleteTree, Key: s.chunkDir(k)}},
		}
	}
	if err := s.txn(ctx, ops); err != nil {
		return s.fail("deleting", k, err)
	}
	return nil
}

// Exists reports whether key is a value or a directory (has keys under
// it). It answers false when Consul cannot be asked.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	k, err := dirKey(key)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	if k == "" {
		keys, _, err := s.client.KV().Keys(s.prefix+"/", "/", q)
		return err == nil && len(keys) > 0
	}
	// One request answers both: with separator "/", the value shows as
	// the key itself and a directory as the key followed by "/" (siblings
	// whose names start with the same string are listed too).
	dk := s.dataKey(k)
	keys, _, err := s.client.KV().Keys(dk, "/", q)
	if err != nil {
		s.logger.Warn("checking whether a key exists", zap.String("key", k), zap.Error(err))
		return false
	}
	return slices.Contains(keys, dk) || slices.Contains(keys, dk+"/")
}

// Stat describes key: a value (IsTerminal, with size and modification
// time) or a directory.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	k, err := dirKey(key)
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("stat: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	if k != "" {
		pair, _, err := s.client.KV().Get(s.dataKey(k), q)
		if err != nil {
			return certmagic.KeyInfo{}, s.fail("stat", k, err)
		}
		if pair != nil {
			info := certmagic.KeyInfo{Key: k, IsTerminal: true, Modified: flagsTime(pair.Flags)}
			switch {
			case pair.Flags&flagChunked != 0:
				m, err := parseManifest(pair.Value)
				if err != nil {
					return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", k, err)
				}
				info.Size = int64(m.plain)
			case s.rt.Sealer != nil:
				plain, err := s.rt.Sealer.Open(k, pair.Value)
				if err != nil {
					return certmagic.KeyInfo{}, fmt.Errorf("stat: %w", err)
				}
				info.Size = int64(len(plain))
			default:
				info.Size = int64(len(pair.Value))
				if plain, err := s.rt.Sealer.Open(k, pair.Value); err == nil {
					info.Size = int64(len(plain)) // without the escape of backend.Sealer
				}
			}
			return info, nil
		}
	}
	keys, meta, err := s.client.KV().Keys(s.dirKey(k), "/", q)
	if err != nil {
		return certmagic.KeyInfo{}, s.fail("stat", k, err)
	}
	if len(children(keys, s.dirKey(k))) == 0 {
		if meta != nil && meta.ResultsFilteredByACLs {
			return certmagic.KeyInfo{}, s.fail("stat", k, errFiltered)
		}
		if k == "" {
			if _, err := s.probe(ctx, k); err != nil {
				return certmagic.KeyInfo{}, s.fail("stat", k, err)
			}
		}
		return certmagic.KeyInfo{}, notExist("stat", k)
	}
	return certmagic.KeyInfo{Key: k, IsTerminal: false}, nil
}

// List returns the full keys under path: its direct children (values and
// directories), or with recursive every value and directory below it. A
// missing path is fs.ErrNotExist; a value has no children; an empty root
// has none either (no error).
func (s *Storage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	dir, err := dirKey(path)
	if err != nil {
		return nil, fmt.Errorf("listing: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	base := s.dirKey(dir)
	sep := "/"
	if recursive {
		sep = ""
	}
	keys, meta, err := s.client.KV().Keys(base, sep, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, s.fail("listing", dir, err)
	}
	if meta != nil && meta.ResultsFilteredByACLs {
		return nil, s.fail("listing", dir, errFiltered)
	}
	rel := children(keys, base)
	if len(rel) == 0 {
		// A value has no children, nor has an empty root; anything else
		// is missing.
		isValue, err := s.probe(ctx, dir)
		if err != nil {
			return nil, s.fail("listing", dir, err)
		}
		if isValue || dir == "" {
			// the root always exists (as the root directory of Caddy's
			// file storage does once Caddy has run): an empty storage
			// lists no keys
			return []string{}, nil
		}
		return nil, notExist("listing", dir)
	}
	return listKeys(dir, rel, recursive), nil
}

// listKeys returns the full keys List reports for the keys rel found
// below dir (relative to it, as children returns them): with recursive,
// also the directories between dir and each key.
func listKeys(dir string, rel []string, recursive bool) []string {
	seen := make(map[string]bool, len(rel))
	out := make([]string, 0, len(rel))
	add := func(r string) {
		full := r
		if dir != "" {
			full = dir + "/" + r
		}
		if !seen[full] {
			seen[full] = true
			out = append(out, full)
		}
	}
	for _, r := range rel {
		if recursive {
			for _, p := range backend.Parents(r) {
				add(p)
			}
		}
		add(r)
	}
	slices.Sort(out)
	return out
}

// probe reads the value at k (the key_prefix itself for the root), so that
// an empty listing is told apart from keys the ACL policy hides: Consul
// silently leaves hidden keys out of listings, but refuses to read a key
// the token may not read, even a missing one.
func (s *Storage) probe(ctx context.Context, k string) (isValue bool, err error) {
	key := s.prefix
	if k != "" {
		key = s.dataKey(k)
	}
	pair, _, err := s.client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, err
	}
	return pair != nil && k != "", nil
}

// children returns the keys below base relative to it, without trailing
// slashes, leaving out empty names (Consul folder markers such as "<base>"
// or "<base>x/") and keys this storage cannot have written (see checkKey).
func children(keys []string, base string) []string {
	out := make([]string, 0, len(keys))
	for _, key := range keys {
		r, ok := strings.CutPrefix(key, base)
		if !ok {
			continue
		}
		r = strings.TrimSuffix(r, "/")
		if r == "" || checkKey(r) != nil {
			continue
		}
		out = append(out, r)
	}
	return out
}

// txn runs a write transaction that is expected to succeed.
func (s *Storage) txn(ctx context.Context, ops api.TxnOps) error {
	ok, resp, _, err := s.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	if !ok {
		return txnErrors(resp)
	}
	return nil
}

// txnErrors describes why a transaction was rolled back.
func txnErrors(resp *api.TxnResponse) error {
	if resp == nil || len(resp.Errors) == 0 {
		return errors.New("consul rolled back the transaction")
	}
	msgs := make([]string, len(resp.Errors))
	for i, e := range resp.Errors {
		msgs[i] = fmt.Sprintf("op %d: %s", e.OpIndex, e.What)
	}
	return fmt.Errorf("consul rolled back the transaction: %s", strings.Join(msgs, "; "))
}

// resultAt returns the KV pair of the i-th result, or nil.
func resultAt(resp *api.TxnResponse, i int) *api.KVPair {
	if resp == nil || i >= len(resp.Results) || resp.Results[i] == nil {
		return nil
	}
	return resp.Results[i].KV
}

// errFiltered is reported when Consul hid keys from the token.
var errFiltered = errors.New("consul hid keys from this token: its ACL policy does not allow reading them")

// fail wraps a Consul error for the operation op on key k, with a hint for
// ACL denials. It never wraps fs.ErrNotExist: a backend failure is not a
// missing key.
func (s *Storage) fail(op, k string, err error) error {
	if k == "" {
		k = "(root)"
	}
	msg := err.Error()
	var se api.StatusError
	if (errors.As(err, &se) && se.Code == 403) || strings.Contains(msg, "Permission denied") || strings.Contains(msg, "ACL not found") {
		return fmt.Errorf("%s %s: consul denied access (check the token and its ACL policy): %w", op, k, err)
	}
	return fmt.Errorf("%s %s: consul: %w", op, k, err)
}

// notExist is the error for a missing key.
func notExist(op, k string) error {
	if k == "" {
		k = "(root)"
	}
	return fmt.Errorf("%s %s: %w", op, k, fs.ErrNotExist)
}

// fileKey cleans key and refuses the root, which cannot hold a value, and
// keys checkKey refuses.
func fileKey(key string) (string, error) {
	k := backend.Clean(key)
	if k == "" {
		return "", errors.New("empty key")
	}
	if err := checkKey(k); err != nil {
		return "", fmt.Errorf("key %q: %w", k, err)
	}
	return k, nil
}

// dirKey cleans key, which may be the root, and refuses keys checkKey
// refuses.
func dirKey(key string) (string, error) {
	k := backend.Clean(key)
	if err := checkKey(k); err != nil {
		return "", fmt.Errorf("key %q: %w", k, err)
	}
	return k, nil
}

// checkKey refuses keys that would not reach Consul as they are: Consul's
// HTTP server cleans request paths ("a/../b" is "b", "a//b" is "a/b"), and
// its JSON listings turn bytes that are not UTF-8 into U+FFFD, so such a
// key would overwrite, or be listed as, another key. Its errors wrap
// fs.ErrInvalid.
func checkKey(k string) error {
	return backend.CheckKey(k)
}

// dataKey is the Consul key of the certmagic key k.
func (s *Storage) dataKey(k string) string {
	return s.prefix + "/" + k
}

// dirKey is the Consul prefix of the keys under directory k.
func (s *Storage) dirKey(k string) string {
	if k == "" {
		return s.prefix + "/"
	}
	return s.prefix + "/" + k + "/"
}

// chunkDir is the Consul prefix of the chunks of k and of every key under
// k: each component is prefixed with "k", so a key's own chunks (under
// "c/") never share a prefix with a descendant's.
func (s *Storage) chunkDir(k string) string {
	return s.prefix + chunksSuffix + "/k" + strings.ReplaceAll(k, "/", "/k") + "/"
}

// ownChunks is the Consul prefix of k's own chunks.
func (s *Storage) ownChunks(k string) string {
	return s.chunkDir(k) + "c/"
}

// chunkKey is the Consul key of chunk i of generation gen of k.
func (s *Storage) chunkKey(k, gen string, i int) string {
	return fmt.Sprintf("%s%s.%04d", s.ownChunks(k), gen, i)
}

// manifest is the value stored in place of a chunked value.
type manifest struct {
	gen         string
	chunks      int
	size, plain int // bytes stored (sealed) and bytes of the value
}

const manifestMagic = "caddy-acme-chunks/v1"

func (m manifest) String() string {
	return fmt.Sprintf("%s %s %d %d %d", manifestMagic, m.gen, m.chunks, m.size, m.plain)
}

// parseManifest reads a manifest, as storeChunked writes them: a
// generation newGen could have named, and a chunk count that fits both
// maxChunks and the size (so that a damaged or foreign manifest cannot make
// Load allocate, or list, more than a value can hold).
func parseManifest(b []byte) (manifest, error) {
	bad := errors.New("value is marked as chunked but has no valid manifest")
	f := strings.Fields(string(b))
	if len(f) != 5 || f[0] != manifestMagic || !validGen(f[1]) {
		return manifest{}, bad
	}
	m := manifest{gen: f[1]}
	var err error
	for i, p := range []*int{&m.chunks, &m.size, &m.plain} {
		if *p, err = strconv.Atoi(f[2+i]); err != nil || *p < 0 {
			return manifest{}, bad
		}
	}
	if m.chunks < 1 || m.chunks > maxChunks || m.size > m.chunks*chunkSize || m.size <= (m.chunks-1)*chunkSize || m.plain > m.size {
		return manifest{}, bad
	}
	return m, nil
}

// validGen reports whether g could be a generation newGen named: letters,
// digits and dashes only (never a "/" or "." that would move the chunk
// keys, nor white space).
func validGen(g string) bool {
	if g == "" {
		return false
	}
	for _, c := range g {
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && c != '-' {
			return false
		}
	}
	return true
}

// nowFlags returns the flags of a value written now: its modification time
// in Unix milliseconds.
func nowFlags() uint64 {
	return uint64(time.Now().UnixMilli()) &^ flagChunked
}

// flagsTime returns the modification time stored in flags (zero for
// values written by others, with flags 0).
func flagsTime(flags uint64) time.Time {
	ms := flags &^ flagChunked
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(int64(ms))
}

const (
	// inlineMax is the largest (sealed) value stored as one KV pair:
	// Consul's default kv_max_value_size.
	inlineMax = 512 << 10
	// chunkSize is the size of the chunks of larger values; a chunk is
	// written by a transaction (to learn its index), which carries it
	// base64-encoded within Consul's default 512 KiB txn_max_req_len.
	chunkSize = 256 << 10
	// maxTxnOps is Consul's limit on the operations of a transaction.
	maxTxnOps = 128
	// maxChunks keeps the publishing transaction (one check per chunk and
	// the manifest) within maxTxnOps.
	maxChunks = 120
	// flagChunked marks a manifest; the other bits of the flags hold the
	// modification time.
	flagChunked uint64 = 1 << 63

	chunksSuffix = ".chunks"
	locksSuffix  = ".locks"
)

// txnValueMax is the largest value Store writes in a transaction (a
// transaction's JSON body carries it in base64, and Consul's
// txn_max_req_len is 512 KiB by default); larger ones are PUT.
const txnValueMax = 256 << 10

// inlineIndex is the ModifyIndex of pair for backend.Known: 0 (nothing to
// remember) unless pair is an inline value.
func inlineIndex(pair *api.KVPair) uint64 {
	if pair == nil || pair.Flags&flagChunked != 0 {
		return 0
	}
	return pair.ModifyIndex
}
