package redis

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/acmekit/caddy-acme/storage/internal/backend"
)

// On a standalone or Sentinel-managed server, Store, Delete, the List of a
// directory and the Stat of a directory are each one Lua script: one round
// trip, atomic. Index fields a script writes carry the stamp "+" followed
// by the Unix ms ("written with the value"): as a script writes the field
// and the value together and removes them together, such a field whose
// file or directory no longer exists is removed at once by the script that
// finds it, with no grace. Fields without the "+" (written by Redis
// Cluster's three round trips, which never meet these scripts, or by an
// earlier version of this storage during a rolling upgrade) keep the
// minute's grace, as do the prunes of the multi-round-trip readers
// (recursive List), for which a "+" stamp reads as its Unix ms. So a mass
// Delete leaves the index as small as the files left, and the next List
// costs what it cost before.
//
// The scripts reach keys they compute from the key prefix (ARGV[1]), as
// Redis allows outside Cluster; ARGV[2] is the grace in ms.

// atomicBudget bounds the Redis commands one script runs while it walks
// the indexes (Redis runs nothing else meanwhile): a script that runs out
// leaves the rest to the next call (Delete) or to the readers' walk of
// several round trips (List, Stat, Store's check), so that a directory of
// 100 000 children or a tree of stale fields never blocks the server for
// long. A page of listScript checks up to listPage children.
const (
	atomicBudget = 1024
	listPage     = 256
)

// atomicLib is the Lua shared by the scripts: rc is redis.call within the
// budget; prunable(v) is whether a dead field with the stamp v may be
// removed; child(dir, f) the key a field of dir's index names and whether
// it is a directory (nil for a field indexFields never writes); split(k)
// the directory of k and its name; cascade(dir) removes the field of each
// directory, from dir up, whose index no longer exists. A script pays for
// every function its Lua defines, on every call: the hot paths define few.
//
//nolint:dupword // Lua: nested ends
var atomicLib = `
local P, grace = ARGV[1], tonumber(ARGV[2])
local budget = ` + strconv.Itoa(atomicBudget) + `
local function rc(...)
	budget = budget - 1
	return redis.call(...)
end
local nowms
local function prunable(v)
	if string.byte(v, 1) == 43 then return true end
	local at = tonumber(v)
	if not at then return true end
	if not nowms then
		local t = redis.call('TIME')
		nowms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
	end
	return nowms - at >= grace
end
local function child(dir, f)
	local isdir = string.byte(f, -1) == 47
	local name = f
	if isdir then name = string.sub(f, 1, -2) end
	if name == '' or string.find(name, '/', 1, true) then return nil, false end
	if dir ~= '' then name = dir .. '/' .. name end
	return name, isdir
end
local function split(k)
	local i = string.find(k, '/[^/]*$')
	if not i then return '', k end
	return string.sub(k, 1, i - 1), string.sub(k, i + 1)
end
local function cascade(dir)
	while dir ~= '' and redis.call('EXISTS', P .. 'd:' .. dir) == 0 do
		local parent, name = split(dir)
		local idx = P .. 'd:' .. parent
		local v = redis.call('HGET', idx, name .. '/')
		if not v or not prunable(v) then return end
		redis.call('HDEL', idx, name .. '/')
		dir = parent
	end
end
`

// atomicLive is the Lua of the scripts that walk the indexes, after
// atomicLib: live(dir) is whether a file exists below dir (nil once the
// budget is spent), removing the dead fields it passes that may be
// removed; visit(dir, idx, f, v) the key the field f (stamp v) of dir's
// index idx names if it exists, false if not (the field removed if it may
// be), nil once the budget is spent.
//
//nolint:dupword // Lua: nested ends
var atomicLive = `
local live
local function visit(dir, idx, f, v)
	if budget <= 0 then return nil end
	local k, isdir = child(dir, f)
	if k then
		if isdir then
			local l = live(k)
			if l == nil then return nil end
			if l then return k end
			if rc('EXISTS', P .. 'd:' .. k) == 1 then return false end
		elseif rc('EXISTS', P .. 'v:' .. k) == 1 then
			return k
		end
	end
	if prunable(v) then rc('HDEL', idx, f) end
	return false
end
live = function(dir)
	local idx = P .. 'd:' .. dir
	local cursor = '0'
	repeat
		if budget <= 0 then return nil end
		local page = rc('HSCAN', idx, cursor, 'COUNT', 32)
		cursor = page[1]
		local h = page[2]
		for i = 1, #h, 2 do
			local r = visit(dir, idx, h[i], h[i + 1])
			if r == nil then return nil end
			if r then return true end
		end
	until cursor == '0'
	return false
end
`

// In the comments of the scripts below, a directory's index is "d:"+dir
// and a file's value "v:"+key under the prefix (see Storage's data
// layout).

// The store scripts take the same KEYS and ARGV (storeArgs): KEYS are the
// key's index, the values of the n = ARGV[8] - 1 directories above it (root
// first), the n + 1 indexes to write the fields ARGV[10…] into, then the
// key's value; ARGV[3] is the key, ARGV[4] its value, ARGV[5] its size,
// ARGV[6] its modification time, ARGV[7] the fields' Unix ms (stamped after
// a "+"), ARGV[9] "1" when the caller already checked that the key is not a
// directory. storeWrite is their end: it writes the fields and the value.
const storeWrite = `
local m = tonumber(ARGV[8])
local stamp = '+' .. ARGV[7]
for i = m + 1, #KEYS - 1 do
	redis.call('HSET', KEYS[i], ARGV[i - m + 9], stamp)
end
redis.call('HSET', KEYS[#KEYS], 'value', ARGV[4], 'size', ARGV[5], 'modified', ARGV[6])
return 0
`

// storeFastScript stores the key when none of its first ARGV[8] KEYS
// exists (its index and the values above it: no conflict is possible), and
// returns 0; else -3, with nothing written. It is the common case in one
// EXISTS, without the libraries.
var storeFastScript = goredis.NewScript(`
if redis.call('EXISTS', unpack(KEYS, 1, tonumber(ARGV[8]))) > 0 then return -3 end
` + storeWrite)

// storeScript stores the key unless a directory above it is a file (it
// returns that directory's position among backend.Parents, from 1) or it
// is a directory (-1). If it has an index and the budget did not suffice to
// tell whether a file exists below it, it returns -2 with nothing written.
// It returns 0 once stored.
//
//nolint:dupword // Lua: nested ends
var storeScript = goredis.NewScript(atomicLib + atomicLive + `
for i = 2, tonumber(ARGV[8]) do
	if redis.call('EXISTS', KEYS[i]) == 1 then return i - 1 end
end
if ARGV[9] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
	local l = live(ARGV[3])
	if l then return -1 end
	if l == nil then return -2 end
end
` + storeWrite)

// listScript checks a page of the children of ARGV[3], from the HSCAN
// cursor ARGV[4] (up to listPage of them): the files in one EXISTS, one by
// one only if some are gone. It returns the next cursor;
// "1" if this is the last page and ARGV[3] is a file, else "0"; the keys
// of the children that exist; ""; then the field and stamp of each child
// the budget did not suffice to check.
//
//nolint:dupword // Lua: nested ends
var listScript = goredis.NewScript(atomicLib + atomicLive + `
local dir, cursor = ARGV[3], ARGV[4]
local idx = P .. 'd:' .. dir
local page = rc('HSCAN', idx, cursor, 'COUNT', ` + strconv.Itoa(listPage) + `)
local h = page[2]
local out = {page[1], '0'}
local unknown = {}
local names, dirs, values = {}, {}, {}
for i = 1, #h, 2 do
	names[i], dirs[i] = child(dir, h[i])
	if names[i] and not dirs[i] then values[#values + 1] = P .. 'v:' .. names[i] end
end
local files = #values > 0 and rc('EXISTS', unpack(values)) == #values
for i = 1, #h, 2 do
	local r
	if files and names[i] and not dirs[i] then
		r = names[i]
	else
		r = visit(dir, idx, h[i], h[i + 1])
	end
	if r == nil then
		unknown[#unknown + 1] = h[i]
		unknown[#unknown + 1] = h[i + 1]
	elseif r then
		out[#out + 1] = r
	end
end
if page[1] == '0' and dir ~= '' then
	if cursor == '0' and #h == 0 then cascade(dir) end
	if redis.call('EXISTS', P .. 'v:' .. dir) == 1 then out[2] = '1' end
end
out[#out + 1] = ''
for _, x in ipairs(unknown) do out[#out + 1] = x end
return out
`)

// statDirScript returns 1 if a file exists below ARGV[3], 0 if not, -1 if
// the budget did not suffice to tell.
var statDirScript = goredis.NewScript(atomicLib + atomicLive + `
local l = live(ARGV[3])
if l == nil then return -1 end
if l then return 1 end
cascade(ARGV[3])
return 0
`)

// deleteScript deletes ARGV[3] and everything below it, depth first,
// until the budget is spent. A file's value and its field go together, a
// directory's field once nothing is left below it, so that whenever a
// script ends every "+" field still names something that exists (see
// listAtomic). Index fields that may not be removed yet (prunable) are
// kept, and with them the fields of the directories above them. It
// returns whether something is left to delete (the budget ran out), and
// how many keys and fields it removed.
//
//nolint:dupword // Lua: nested ends
var deleteScript = goredis.NewScript(atomicLib + `
local removed = 0
local function remove(k)
	local idx = P .. 'd:' .. k
	local h = rc('HGETALL', idx)
	local kept = false
	for i = 1, #h, 2 do
		if budget <= 0 then return true end
		local c, isdir = child(k, h[i])
		local below = false
		if isdir then
			below = remove(c)
		elseif c then
			removed = removed + rc('DEL', P .. 'v:' .. c)
		end
		if below or not prunable(h[i + 1]) then
			kept = true
		else
			removed = removed + rc('HDEL', idx, h[i])
		end
	end
	return kept
end
local key = ARGV[3]
if key ~= '' then removed = removed + rc('DEL', P .. 'v:' .. key) end
local kept = remove(key)
local more = 0
if kept and budget <= 0 then more = 1 end
if key == '' then return {more, removed} end
local dir, name = split(key)
local idx = P .. 'd:' .. dir
local fields = {name}
if not kept then fields[2] = name .. '/' end
for _, f in ipairs(fields) do
	local v = redis.call('HGET', idx, f)
	if v and prunable(v) then redis.call('HDEL', idx, f) end
end
cascade(dir)
return {more, removed}
`)

// deleteFileScript is the common case of Delete in a few commands and
// without the libraries: KEYS are the key's index, its directory's index
// and its value; ARGV[1] is the key's name in the directory, ARGV[2] the
// directory, ARGV[3] the prefix. When the key is a file or nothing, with a
// "+" field or none, and no field of a directory of that name, it deletes
// the value and the field, then the fields of the directories left empty
// above it (deleteScript's cascade), and returns 0. Else, or when a field
// on the way up is not a "+" one, it returns -1, having done nothing or
// only part of the walk up: the full deleteScript decides.
//
//nolint:dupword // Lua: nested ends
var deleteFileScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local f = redis.call('HMGET', KEYS[2], ARGV[1], ARGV[1] .. '/')
if f[2] or (f[1] and string.byte(f[1], 1) ~= 43) then return -1 end
redis.call('DEL', KEYS[3])
if f[1] then redis.call('HDEL', KEYS[2], ARGV[1]) end
local dir, P = ARGV[2], ARGV[3]
while dir ~= '' and redis.call('EXISTS', P .. 'd:' .. dir) == 0 do
	local parent, name = '', dir
	local i = string.find(dir, '/[^/]*$')
	if i then parent, name = string.sub(dir, 1, i - 1), string.sub(dir, i + 1) end
	local idx = P .. 'd:' .. parent
	local v = redis.call('HGET', idx, name .. '/')
	if not v then return 0 end
	if string.byte(v, 1) ~= 43 then return -1 end
	redis.call('HDEL', idx, name .. '/')
	dir = parent
end
return 0
`)

// runAtomic runs one of the scripts above on key with the further
// arguments args.
func (s *Storage) runAtomic(ctx context.Context, script *goredis.Script, key string, args ...any) *goredis.Cmd {
	argv := make([]any, 0, 3+len(args))
	argv = append(argv, s.prefix, s.grace.Milliseconds(), key)
	return script.Run(ctx, s.client, nil, append(argv, args...)...)
}

// storeAtomic is Store on a standalone or Sentinel-managed server.
func (s *Storage) storeAtomic(ctx context.Context, key string, sealed []byte, size int, now time.Time) error {
	fields := indexFields(key)
	keys := make([]string, 0, 2*len(fields)+1)
	args := make([]any, 0, 9+len(fields))
	args = append(args, s.prefix, s.grace.Milliseconds(), key, sealed, size, now.UnixNano(), strconv.FormatInt(now.UnixMilli(), 10), len(fields), "0")
	keys = append(keys, s.indexKey(key))
	for _, f := range fields[1:] {
		keys = append(keys, s.valueKey(f.dir))
	}
	for _, f := range fields {
		keys = append(keys, s.indexKey(f.dir))
		args = append(args, f.field)
	}
	keys = append(keys, s.valueKey(key))
	script := storeFastScript
	for {
		n, err := script.Run(ctx, s.client, keys, args...).Int64()
		switch {
		case err != nil:
			return fmt.Errorf("storing %s: %w", key, err)
		case n == -3: // a conflict is possible: the full check decides
			script = storeScript
			continue
		case n > 0:
			return backend.ErrUnderValue(key, backend.Parents(key)[n-1])
		case n == -1:
			return backend.ErrIsDir(key)
		case n == -2 && args[8] == "0":
			// key's index is large or stale: Stat's walk decides
			switch info, err := s.Stat(ctx, key); {
			case errors.Is(err, fs.ErrNotExist):
			case err != nil:
				return fmt.Errorf("storing %s: %w", key, err)
			case !info.IsTerminal:
				return backend.ErrIsDir(key)
			}
			args[8] = "1"
			continue
		}
		return nil
	}
}

// listAtomic is the List of one directory on a standalone or
// Sentinel-managed server. A field stamped "+" was written and is removed
// together with what it names (storeScript, deleteScript, and every prune
// of the scripts checks first), so an index of such fields alone is read
// as it is: one HGETALL, then, only if it has no fields, an EXISTS telling
// a file (listed as empty) from nothing. An index with other fields
// (written by an earlier version, or damaged) is checked by listChecked.
func (s *Storage) listAtomic(ctx context.Context, dir string) ([]string, error) {
	index, err := s.client.HGetAll(ctx, s.indexKey(dir)).Result()
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	keys := make([]string, 0, len(index))
	for field, stamp := range index {
		if !strings.HasPrefix(stamp, "+") || !validField(field) {
			return s.listChecked(ctx, dir)
		}
		keys = append(keys, childNode(dir, field, stamp).key)
	}
	if len(keys) == 0 && dir != "" {
		// no children: a file lists as empty, nothing is missing
		n, err := s.client.Exists(ctx, s.valueKey(dir)).Result()
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", dir, err)
		}
		if n == 0 {
			return nil, fmt.Errorf("listing %s: %w", dir, fs.ErrNotExist)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil // "x" and "x/" are one key
}

// listChecked is the List of one directory whose index the scripts did not
// all write: one round trip for up to listPage children, children the
// scripts' budget left unchecked checked as on Cluster.
func (s *Storage) listChecked(ctx context.Context, dir string) ([]string, error) {
	var keys []string
	var unknown []*search
	var isFile bool
	for cursor := "0"; ; {
		out, err := s.runAtomic(ctx, listScript, dir, cursor).StringSlice()
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", dir, err)
		}
		if len(out) < 3 {
			return nil, fmt.Errorf("listing %s: unexpected reply of %d elements", dir, len(out))
		}
		cursor, isFile = out[0], out[1] == "1"
		rest := out[2:]
		end := slices.Index(rest, "")
		keys = append(keys, rest[:end]...)
		for u := rest[end+1:]; len(u) >= 2; u = u[2:] {
			sr := &search{}
			sr.add(childNode(dir, u[0], u[1]))
			unknown = append(unknown, sr)
		}
		if cursor == "0" {
			break
		}
	}
	if len(unknown) > 0 {
		if err := s.resolve(ctx, unknown); err != nil {
			return nil, fmt.Errorf("listing %s: %w", dir, err)
		}
		for _, sr := range unknown {
			if sr.live {
				keys = append(keys, sr.root.key)
			}
		}
	}
	if len(keys) == 0 && dir != "" && !isFile {
		return nil, fmt.Errorf("listing %s: %w", dir, fs.ErrNotExist)
	}
	if keys == nil {
		return []string{}, nil
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil // "x" and "x/" are one key; HSCAN may repeat one
}

// statDirAtomic reports whether the directory key exists, on a standalone
// or Sentinel-managed server; known is false if the script's budget did
// not suffice to tell.
func (s *Storage) statDirAtomic(ctx context.Context, key string) (live, known bool, err error) {
	n, err := s.runAtomic(ctx, statDirScript, key).Int64()
	return n == 1, n >= 0, err
}

// deleteAtomic is Delete on a standalone or Sentinel-managed server: a
// file in deleteFileScript; else (a directory, fields of other writers)
// the full script, again while it is not done. One that made no progress
// found only fields it may not remove yet, more than its budget: fields
// written in the last minute by nodes of an earlier version, between their
// index and value writes.
func (s *Storage) deleteAtomic(ctx context.Context, key string) error {
	if key != "" {
		dir, name := parentOf(key)
		keys := []string{s.indexKey(key), s.indexKey(dir), s.valueKey(key)}
		switch n, err := deleteFileScript.Run(ctx, s.client, keys, name, dir, s.prefix).Int64(); {
		case err != nil:
			return fmt.Errorf("deleting %s: %w", key, err)
		case n == 0:
			return nil
		}
	}
	for {
		out, err := s.runAtomic(ctx, deleteScript, key).Int64Slice()
		switch {
		case err != nil:
			return fmt.Errorf("deleting %s: %w", key, err)
		case len(out) != 2:
			return fmt.Errorf("deleting %s: unexpected reply of %d elements", key, len(out))
		case out[0] == 0:
			return nil
		case out[1] == 0:
			return fmt.Errorf("deleting %s: more than %d index fields below it were written in the last minute by another writer that has not written their values yet; try again in a minute", key, atomicBudget)
		}
	}
}
