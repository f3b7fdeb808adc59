package redis

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
	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// Redis key kinds under the prefix (see Storage's data layout).
const (
	valueKind = "v:"      // hash with the fields below
	indexKind = "d:"      // hash: child name ("x", or "x/" for a directory) → Unix ms written
	lockKind  = "l:"      // string: owner token, with the lease as expiry
	chanKind  = "unlock:" // pub/sub channel announcing an Unlock

	fieldValue    = "value"
	fieldSize     = "size"
	fieldModified = "modified"
)

const (
	// searchBreadth is how many candidates of one directory are checked in
	// the first round trip when looking for a file that proves the
	// directory exists; it doubles every round, up to maxSearchBreadth.
	searchBreadth    = 8
	maxSearchBreadth = 1024
	// scanCount is the COUNT of the HSCAN reading a directory index page.
	scanCount = 32
)

func (s *Storage) valueKey(key string) string { return s.prefix + valueKind + key }
func (s *Storage) indexKey(dir string) string { return s.prefix + indexKind + dir }

// Store puts value at key: the index fields of every directory above key
// first, then the value (see Storage's data layout): one script on a
// standalone or Sentinel-managed server; on Cluster, index fields this
// instance wrote a moment ago are not written again.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	key = backend.Clean(key)
	if err := checkKey(key); err != nil {
		return fmt.Errorf("storing %q: %w", key, err)
	}
	sealed := s.rt.Sealer.Seal(key, value)
	now := time.Now()
	if !s.client.cluster {
		return s.storeAtomic(ctx, key, sealed, len(value), now)
	}
	if err := s.checkConflict(ctx, key); err != nil {
		return err
	}
	var err error
	fields := s.recent.stale(indexFields(key), now)
	if len(fields) > 0 {
		// Indexes on other nodes may be written in any order within a
		// pipeline: finish them before the value.
		_, err = s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
			s.addIndex(ctx, p, fields, now)
			return nil
		})
	}
	if err == nil {
		err = s.client.HSet(ctx, s.valueKey(key), fieldValue, sealed, fieldSize, len(value), fieldModified, now.UnixNano()).Err()
	}
	if err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	s.recent.add(fields, now)
	return nil
}

// checkConflict refuses to store key below a value (backend.ErrUnderValue)
// or over a directory (backend.ErrIsDir), as Caddy's file storage does. It
// costs one round trip: whether each directory above key is a value, and
// whether key has a directory index; only an index (key is, or was, a
// directory: rare) costs a Stat, whose search stops at the first live key
// below. It is a check before the write, not a transaction with it (it
// serves Cluster only): two nodes storing "a" and "a/b" at the same moment
// can both succeed there.
func (s *Storage) checkConflict(ctx context.Context, key string) error {
	parents := backend.Parents(key)
	pipe := s.client.Pipeline()
	above := make([]*goredis.IntCmd, len(parents))
	for i, p := range parents {
		above[i] = pipe.Exists(ctx, s.valueKey(p))
	}
	index := pipe.Exists(ctx, s.indexKey(key))
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	for i, c := range above {
		if c.Val() > 0 {
			return backend.ErrUnderValue(key, parents[i])
		}
	}
	if index.Val() == 0 {
		return nil
	}
	switch info, err := s.Stat(ctx, key); {
	case errors.Is(err, fs.ErrNotExist):
		return nil // only stale index fields
	case err != nil:
		return fmt.Errorf("storing %s: %w", key, err)
	case !info.IsTerminal:
		return backend.ErrIsDir(key)
	}
	return nil
}

// indexField is a field of a directory index.
type indexField struct {
	dir, field string
}

// indexFields returns the index fields naming key and every directory
// above it, from the root down.
func indexFields(key string) []indexField {
	fields := make([]indexField, 0, strings.Count(key, "/")+1)
	dir := ""
	for {
		start := 0
		if dir != "" {
			start = len(dir) + 1
		}
		i := strings.IndexByte(key[start:], '/')
		if i < 0 {
			return append(fields, indexField{dir, key[start:]})
		}
		fields = append(fields, indexField{dir, key[start:start+i] + "/"})
		dir = key[:start+i]
	}
}

// addIndex queues the writes of index fields, stamped with the time at.
func (s *Storage) addIndex(ctx context.Context, p goredis.Pipeliner, fields []indexField, at time.Time) {
	stamp := strconv.FormatInt(at.UnixMilli(), 10)
	for _, f := range fields {
		p.HSet(ctx, s.indexKey(f.dir), f.field, stamp)
	}
}

// recentFields remembers the index fields an instance wrote in the last
// moments. Such a field is younger than the prune grace, so nothing removes
// it (see Storage's data layout) and a Store need not write it again; the
// window is a twelfth of the grace (5s), leaving the rest as margin for
// clock differences.
type recentFields struct {
	window time.Duration // 0: remember nothing

	mu     sync.Mutex // protects fields
	fields map[indexField]time.Time
}

// maxRecentFields bounds the memory of recentFields.
const maxRecentFields = 4096

// stale returns the fields not written within the window before now.
func (r *recentFields) stale(fields []indexField, now time.Time) []indexField {
	if r.window <= 0 {
		return fields
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := fields[:0]
	for _, f := range fields {
		if at, ok := r.fields[f]; !ok || now.Sub(at) >= r.window {
			out = append(out, f)
		}
	}
	return out
}

// add records that fields were written with the time at.
func (r *recentFields) add(fields []indexField, at time.Time) {
	if r.window <= 0 || len(fields) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fields == nil {
		r.fields = make(map[indexField]time.Time)
	}
	if len(r.fields)+len(fields) > maxRecentFields {
		for f, t := range r.fields {
			if at.Sub(t) >= r.window {
				delete(r.fields, f)
			}
		}
		if len(r.fields)+len(fields) > maxRecentFields {
			clear(r.fields)
		}
	}
	for _, f := range fields {
		r.fields[f] = at
	}
}

// checkKey rejects keys certmagic's contract does not allow.
func checkKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	if strings.Contains(key, "//") {
		return errors.New("empty path component")
	}
	return nil
}

// Load returns the value at key, or an error wrapping fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	key = backend.Clean(key)
	data, err := s.client.HGet(ctx, s.valueKey(key), fieldValue).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("loading %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", key, err)
	}
	value, err := s.rt.Sealer.Open(key, data)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", key, err)
	}
	return value, nil
}

// Exists reports whether key is a file or a directory (an error counts as
// no).
func (s *Storage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// Stat describes key: a file, a directory (IsTerminal false), or an error
// wrapping fs.ErrNotExist. A file takes one round trip; a directory one
// more on a standalone or Sentinel-managed server (statDirScript), more on
// Cluster (see resolve).
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = backend.Clean(key)
	vals, err := s.client.HMGet(ctx, s.valueKey(key), fieldSize, fieldModified).Result()
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	if len(vals) == 2 && vals[0] != nil {
		size, _ := strconv.ParseInt(fmt.Sprint(vals[0]), 10, 64)
		info := certmagic.KeyInfo{Key: key, Size: size, IsTerminal: true}
		if ns, err := strconv.ParseInt(fmt.Sprint(vals[1]), 10, 64); err == nil {
			info.Modified = time.Unix(0, ns)
		}
		return info, nil
	}
	if !s.client.cluster {
		live, known, err := s.statDirAtomic(ctx, key)
		switch {
		case err != nil:
			return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", key, err)
		case known && !live:
			return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", key, fs.ErrNotExist)
		case known:
			return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
		}
	}
	dir := &node{key: key, dir: true}
	if key != "" {
		dir.parent, dir.field = parentOf(key)
		dir.field += "/"
	}
	sr := &search{}
	sr.add(dir)
	if err := s.resolve(ctx, []*search{sr}); err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	if !sr.live {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", key, fs.ErrNotExist)
	}
	return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
}

// List returns the full keys of the files and directories directly in dir,
// or with recursive everything below it. A missing dir is an error wrapping
// fs.ErrNotExist; a file has no children; the root always exists (an
// empty storage lists no keys, as the existing, empty root directory of
// Caddy's file storage does).
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	dir = backend.Clean(dir)
	if !recursive && !s.client.cluster {
		return s.listAtomic(ctx, dir)
	}
	index, err := s.client.HGetAll(ctx, s.indexKey(dir)).Result()
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	var keys []string
	if recursive {
		keys, err = s.listTree(ctx, dir, index)
	} else {
		keys, err = s.listDir(ctx, dir, index)
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	if len(keys) > 0 {
		return keys, nil
	}
	if dir == "" {
		return []string{}, nil
	}
	n, err := s.client.Exists(ctx, s.valueKey(dir)).Result()
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	if n > 0 {
		return []string{}, nil // a file
	}
	return nil, fmt.Errorf("listing %s: %w", dir, fs.ErrNotExist)
}

// listDir returns the children of dir, from its index fields, that exist.
func (s *Storage) listDir(ctx context.Context, dir string, index map[string]string) ([]string, error) {
	searches := make([]*search, 0, len(index))
	for field, stamp := range index {
		if !validField(field) {
			continue
		}
		sr := &search{}
		sr.add(childNode(dir, field, stamp))
		searches = append(searches, sr)
	}
	if err := s.resolve(ctx, searches); err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(searches))
	for _, sr := range searches {
		if sr.live {
			keys = append(keys, sr.root.key)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil // "x" and "x/" are one key
}

// treeNode is a node of the tree listTree walks.
type treeNode struct {
	node
	up   *treeNode
	live bool
}

// markLive marks n and the directories above it as existing.
func (n *treeNode) markLive() {
	for ; n != nil && !n.live; n = n.up {
		n.live = true
	}
}

// listTree returns everything below dir that exists, walking the indexes
// one level per round trip and checking the files of each level in the
// round trip that reads the next level's indexes.
func (s *Storage) listTree(ctx context.Context, dir string, index map[string]string) ([]string, error) {
	var all, dead []*treeNode
	type pending struct {
		n      *treeNode
		index  *goredis.MapStringStringCmd
		exists *goredis.IntCmd
	}
	var level []pending
	expandIndex := func(parent *treeNode, dirKey string, idx map[string]string) {
		for field, stamp := range idx {
			if !validField(field) {
				continue
			}
			n := &treeNode{node: *childNode(dirKey, field, stamp), up: parent}
			all = append(all, n)
			level = append(level, pending{n: n})
		}
	}
	expandIndex(nil, dir, index)
	for len(level) > 0 {
		cur := level
		level = nil
		pipe := s.client.Pipeline()
		for i := range cur {
			if cur[i].n.dir {
				cur[i].index = pipe.HGetAll(ctx, s.indexKey(cur[i].n.key))
			} else {
				cur[i].exists = pipe.Exists(ctx, s.valueKey(cur[i].n.key))
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
		for _, p := range cur {
			if p.exists != nil {
				if p.exists.Val() > 0 {
					p.n.markLive()
				} else {
					dead = append(dead, p.n)
				}
				continue
			}
			idx := p.index.Val()
			if len(idx) == 0 {
				dead = append(dead, p.n)
			}
			expandIndex(p.n, p.n.key, idx)
		}
	}
	s.prune(ctx, func(yield func(*node) bool) {
		for _, n := range dead {
			if !yield(&n.node) {
				return
			}
		}
	})
	var keys []string
	for _, n := range all {
		if n.live {
			keys = append(keys, n.key)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil
}

// Delete removes key and everything below it. A missing key is not an
// error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	key = backend.Clean(key)
	if !s.client.cluster {
		return s.deleteAtomic(ctx, key)
	}
	return s.deleteWalk(ctx, key)
}

// deleteWalk is Delete in several round trips: it walks the indexes below
// key, deletes the values it finds, then prunes the index fields.
func (s *Storage) deleteWalk(ctx context.Context, key string) error {
	// Walk the indexes below key.
	var files []string
	fields := make(map[string][]string) // index → fields to prune
	dirs := []string{key}
	for len(dirs) > 0 {
		cmds := make([]*goredis.MapStringStringCmd, len(dirs))
		if _, err := s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for i, d := range dirs {
				cmds[i] = p.HGetAll(ctx, s.indexKey(d))
			}
			return nil
		}); err != nil {
			return fmt.Errorf("deleting %s: %w", key, err)
		}
		var next []string
		for i, d := range dirs {
			for field, stamp := range cmds[i].Val() {
				fields[d] = append(fields[d], field)
				if !validField(field) {
					continue // pruned, never followed
				}
				n := childNode(d, field, stamp)
				if n.dir {
					next = append(next, n.key)
				} else {
					files = append(files, n.key)
				}
			}
		}
		dirs = next
	}
	// Values first, so that an interrupted Delete never leaves a value
	// without its index fields.
	if _, err := s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		if key != "" {
			p.Del(ctx, s.valueKey(key))
		}
		for _, f := range files {
			p.Del(ctx, s.valueKey(f))
		}
		return nil
	}); err != nil {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	if key != "" {
		parent, name := parentOf(key)
		fields[parent] = append(fields[parent], name, name+"/")
	}
	if err := s.pruneFields(ctx, fields); err != nil {
		return fmt.Errorf("deleting %s: pruning indexes: %w", key, err)
	}
	return nil
}

// node is a file or directory named by an index field.
type node struct {
	key    string // full key
	dir    bool
	parent string // the directory whose index has the field
	field  string // the field: the name, plus "/" for a directory
	stamp  string // the field's value: Unix ms it was written

	// for a directory being searched
	cursor uint64 // HSCAN cursor of the next page of its index
	found  bool   // a page of its index had fields
}

// childNode returns the node an index field of dir names; the field must
// be valid (see validField).
func childNode(dir, field, stamp string) *node {
	n := &node{parent: dir, field: field, stamp: stamp}
	name := field
	if strings.HasSuffix(field, "/") {
		n.dir = true
		name = field[:len(field)-1]
	}
	if dir == "" {
		n.key = name
	} else {
		n.key = dir + "/" + name
	}
	return n
}

// validField reports whether an index field could have been written by
// indexFields: a non-empty name without "/", with one "/" after it for a
// directory. Other fields (a damaged index, or one another program wrote
// under the prefix) name nothing and are skipped; followed, a field "/"
// would name the directory itself and make List, Stat and Delete loop.
func validField(field string) bool {
	name := strings.TrimSuffix(field, "/")
	return name != "" && strings.IndexByte(name, '/') < 0
}

// parentOf splits key into its directory and its last component.
func parentOf(key string) (dir, name string) {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		return key[:i], key[i+1:]
	}
	return "", key
}

// search looks for one file that exists at or below root, which proves
// root exists.
type search struct {
	root  *node
	files []*node // candidates: files to check
	dirs  []*node // candidates: directories whose index to read (further)
	live  bool

	breadth int // candidates checked in the last round
}

// add adds a candidate; the first one added is the root.
func (sr *search) add(n *node) {
	if sr.root == nil {
		sr.root = n
	}
	if n.dir {
		sr.dirs = append(sr.dirs, n)
	} else {
		sr.files = append(sr.files, n)
	}
}

// page takes in a page of dir's index read with HSCAN, and returns whether
// dir is known to be empty: its index had no fields at all.
func (sr *search) page(dir *node, scan *goredis.ScanCmd) (empty bool) {
	kv, cursor := scan.Val()
	for i := 0; i+1 < len(kv); i += 2 {
		if validField(kv[i]) {
			sr.add(childNode(dir.key, kv[i], kv[i+1]))
			dir.found = true
		}
	}
	if cursor != 0 {
		dir.cursor = cursor
		sr.dirs = append(sr.dirs, dir)
		return false
	}
	return !dir.found
}

// resolve runs the searches, one round trip per step down the tree for all
// of them together, each stopping at its first file that exists. Fields
// found stale are pruned.
func (s *Storage) resolve(ctx context.Context, searches []*search) error {
	var dead []*node
	type check struct {
		sr     *search
		n      *node
		exists *goredis.IntCmd
		scan   *goredis.ScanCmd
	}
	for {
		var checks []check
		pipe := s.client.Pipeline()
		for _, sr := range searches {
			if sr.live {
				continue
			}
			// Check a few candidates at first, more each round: most
			// directories are proven by their first file, and stale
			// fields are rare.
			sr.breadth = min(max(2*sr.breadth, searchBreadth), maxSearchBreadth)
			for budget := sr.breadth; budget > 0; budget-- {
				var n *node
				switch {
				case len(sr.files) > 0:
					n, sr.files = sr.files[0], sr.files[1:]
					checks = append(checks, check{sr: sr, n: n, exists: pipe.Exists(ctx, s.valueKey(n.key))})
				case len(sr.dirs) > 0:
					n, sr.dirs = sr.dirs[0], sr.dirs[1:]
					checks = append(checks, check{sr: sr, n: n, scan: pipe.HScan(ctx, s.indexKey(n.key), n.cursor, "", scanCount)})
				}
				if n == nil {
					break
				}
			}
		}
		if len(checks) == 0 {
			break
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		for _, c := range checks {
			if c.sr.live {
				continue
			}
			if c.exists != nil {
				if c.exists.Val() > 0 {
					c.sr.live = true
					c.sr.files, c.sr.dirs = nil, nil
				} else {
					dead = append(dead, c.n)
				}
				continue
			}
			if c.sr.page(c.n, c.scan) {
				dead = append(dead, c.n)
			}
		}
	}
	s.prune(ctx, slices.Values(dead))
	return nil
}

// prune removes the index fields of nodes found not to exist, if they were
// written at least s.grace ago. It is best effort: readers never depend on
// it, so a failure is only logged.
func (s *Storage) prune(ctx context.Context, dead func(yield func(*node) bool)) {
	cutoff := time.Now().Add(-s.grace).UnixMilli()
	fields := make(map[string][]string)
	for n := range dead {
		if n.stamp == "" {
			continue // searched for by key (Stat), not found in an index
		}
		// The script decides by the server's clock; this only saves a
		// round trip for fields that are surely too young.
		if ms, err := strconv.ParseInt(n.stamp, 10, 64); err == nil && ms > cutoff {
			continue
		}
		fields[n.parent] = append(fields[n.parent], n.field)
	}
	if len(fields) == 0 {
		return
	}
	if err := s.pruneFields(ctx, fields); err != nil && s.logger != nil {
		s.logger.Debug("pruning stale index fields", zap.Error(err))
	}
}

// pruneFields runs the prune script on each index with its fields.
func (s *Storage) pruneFields(ctx context.Context, fields map[string][]string) error {
	if len(fields) == 0 {
		return nil
	}
	graceMS := s.grace.Milliseconds()
	_, err := s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for dir, fs := range fields {
			args := make([]any, 0, len(fs)+1)
			args = append(args, graceMS)
			for _, f := range fs {
				args = append(args, f)
			}
			pruneScript.Eval(ctx, p, []string{s.indexKey(dir)}, args...)
		}
		return nil
	})
	return err
}

// pruneScript removes fields (ARGV[2..]) from an index (KEYS[1]) if they
// were written at least ARGV[1] ms ago by the server's clock.
//
//nolint:dupword // Lua: "end end" closes two blocks
var pruneScript = goredis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local grace = tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
	local v = redis.call('HGET', KEYS[1], ARGV[i])
	if v then
		local at = tonumber(v)
		if not at or now - at >= grace then
			redis.call('HDEL', KEYS[1], ARGV[i])
			n = n + 1
		end
	end
end
return n
`)
