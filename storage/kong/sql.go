package kong

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"unicode/utf8"
)

// Kong's DDL, verbatim (kong/plugins/acme/migrations 000_base_acme and
// 001_280_to_300), so that a table created here is the one Kong's migrations
// expect, and running them later is a no-op.
const (
	ddlTable  = `CREATE TABLE IF NOT EXISTS "acme_storage" ("id" UUID PRIMARY KEY, "key" TEXT UNIQUE, "value" TEXT, "created_at" TIMESTAMP WITH TIME ZONE, "ttl" TIMESTAMP WITH TIME ZONE)`
	ddlTTLIdx = `CREATE INDEX IF NOT EXISTS "acme_storage_ttl_idx" ON "acme_storage" ("ttl")`

	// ddlKeyIdx is ours: the key in byte order. Kong's UNIQUE index on key
	// uses the database's collation, which for en_US.UTF-8 and the like
	// cannot answer "keys from A to B in byte order" (and a LIKE 'p%'
	// with a parameter cannot use it in a generic plan). Every prefix
	// query here is a range [p, succ(p)) compared with COLLATE "C", which
	// this index answers under any database collation.
	ddlKeyIdx = `CREATE INDEX IF NOT EXISTS "acme_storage_key_c_idx" ON "acme_storage" ("key" COLLATE "C")`

	// sqlSchemaState says which of the table and indexes exist, in the
	// search_path (Kong's pg_schema).
	sqlSchemaState = `SELECT to_regclass('acme_storage') IS NOT NULL, to_regclass('acme_storage_ttl_idx') IS NOT NULL, to_regclass('acme_storage_key_c_idx') IS NOT NULL`

	// sqlSchemaLock serialises the DDL of nodes starting together: two
	// concurrent CREATE TABLE IF NOT EXISTS can fail on pg_type.
	sqlSchemaLock = `SELECT pg_advisory_xact_lock(7411361924356427776)`
)

// live is Kong's condition for a row that has not expired: reads ignore
// rows whose ttl has passed (Kong deletes them lazily).
const live = `(ttl IS NULL OR ttl >= now())`

// listRangeRead bounds sqlListHead: a directory with at most this many
// live keys below it is listed from that one range read (about as fast as
// the bare read), a bigger one by the skip scan, sqlList (its cost follows
// the children, not the keys below).
const listRangeRead = 16

// Queries on data rows. $key is a full row key (key_prefix + certmagic
// key); [$lo, $hi) is the byte range of every key below a directory: lo is
// "<dir>/" and hi is "<dir>0" ('0' follows '/').
const (
	sqlLoad = `SELECT value FROM acme_storage WHERE key = $1 AND ` + live
	// sqlLoadMany loads several keys in one round trip.
	sqlLoadMany = `SELECT key, value FROM acme_storage WHERE key = ANY($1) AND ` + live

	// sqlStoreChecked stores a row, read-after-write consistent, in one
	// statement with the check that it is neither below a value nor a
	// directory (Store refuses both, see backend.ErrUnderValue,
	// backend.ErrIsDir): the row $1 (id), $2 (key), $3 (value) is written
	// (inserted, or its value, time and ttl updated) only when no live row
	// is among the keys $4 (the directories above) and none lies in
	// [$5, $6) (below the key). It returns that row above, or NULL, and
	// whether a key lies below; the row was written when they are NULL and
	// false. created_at is the modification time (KeyInfo.Modified); id is
	// only set by the insert. The casts give the parameters of the
	// INSERT … SELECT their types.
	sqlStoreChecked = `WITH c AS (SELECT
	(SELECT key FROM acme_storage WHERE key = ANY($4::text[]) AND ` + live + ` LIMIT 1) AS above,
	(SELECT key FROM acme_storage WHERE key COLLATE "C" >= $5::text AND key COLLATE "C" < $6::text AND ` + live + ` ORDER BY key COLLATE "C" LIMIT 1) AS below
), w AS (
	INSERT INTO acme_storage (id, key, value, created_at)
	SELECT $1::uuid, $2::text, $3::text, now() FROM c WHERE c.above IS NULL AND c.below IS NULL
	ON CONFLICT (key) DO UPDATE SET value = excluded.value, created_at = excluded.created_at, ttl = NULL
	RETURNING 1
)
SELECT above, below IS NOT NULL FROM c`

	// sqlStat returns the file's size, the first 33 characters of its value
	// (of an encoded one: the marker and 28 base64 characters, 21 bytes;
	// decodedHead) and its time, else one row of NULLs when it is a
	// directory, else nothing.
	//nolint:dupword // SQL: a row of NULLs
	sqlStat = `(SELECT octet_length(value), substr(value, 1, 33), created_at FROM acme_storage WHERE key = $1 AND ` + live + `)
UNION ALL
(SELECT NULL, NULL, NULL WHERE ` + sqlFirstBelow + ` IS NOT NULL)
LIMIT 1`

	sqlExists = `SELECT EXISTS (SELECT 1 FROM acme_storage WHERE key = $1 AND ` + live + `)
OR ` + sqlFirstBelow + ` IS NOT NULL`

	// sqlFirstBelow is the first live key in [$2, $3), or NULL: "is this a
	// directory". ORDER BY … LIMIT 1 makes it one probe of the byte-order
	// index (an EXISTS lets the planner pick a sequential scan when the
	// range holds most of the table, which reads the whole table when those
	// rows happen to lie at its end).
	sqlFirstBelow = `(SELECT key FROM acme_storage WHERE key COLLATE "C" >= $2 AND key COLLATE "C" < $3 AND ` + live + ` ORDER BY key COLLATE "C" LIMIT 1)`

	sqlFileExists = `SELECT EXISTS (SELECT 1 FROM acme_storage WHERE key = $1 AND ` + live + `)`

	// sqlDelete deletes a file and everything below it.
	sqlDelete = `DELETE FROM acme_storage WHERE key = $1 OR (key COLLATE "C" >= $2 AND key COLLATE "C" < $3)`

	// sqlDeleteRoot deletes everything below key_prefix [$1, $2) except the
	// locks [$3, $4).
	sqlDeleteRoot = `DELETE FROM acme_storage WHERE key COLLATE "C" >= $1 AND key COLLATE "C" < $2 AND NOT (key COLLATE "C" >= $3 AND key COLLATE "C" < $4)`

	// sqlListRecursive returns every live key in [$1, $2).
	sqlListRecursive = `SELECT key FROM acme_storage WHERE key COLLATE "C" >= $1 AND key COLLATE "C" < $2 AND ` + live

	// sqlListHead returns up to $3 live keys in [$1, $2), in order: all of
	// them when fewer than $3 come back.
	sqlListHead = `SELECT key FROM acme_storage WHERE key COLLATE "C" >= $1 AND key COLLATE "C" < $2 AND ` + live + ` ORDER BY key COLLATE "C" LIMIT $3`

	// sqlList is a skip scan ("loose index scan") over acme_storage_key_c_idx:
	// each step is one index probe for the first live key at or after a
	// bound, so the cost is O(children of the directory), never O(keys
	// below it) nor O(table). From a key k, with rest = k after the
	// directory prefix $1 (rest starts at character $3):
	//   - rest has no '/': k is a file child; the next key is the first one
	//     after k (k || chr(1) is the least string greater than k).
	//   - rest = "c/...": k lies below the child c; the next key is the first
	//     one at or after $1 || c || '0', past c's whole subtree.
	// A child is met at most twice (as a file, and again below it when
	// siblings such as "c-x" sort between "c" and "c/"); List dedupes.
	sqlList = `WITH RECURSIVE walk(k) AS (
	(SELECT key FROM acme_storage
	  WHERE key COLLATE "C" >= $1 AND key COLLATE "C" < $2 AND ` + live + `
	  ORDER BY key COLLATE "C" LIMIT 1)
	UNION ALL
	SELECT (SELECT s.key FROM acme_storage s
	  WHERE s.key COLLATE "C" >= (CASE WHEN strpos(substr(w.k, $3), '/') = 0 THEN w.k || chr(1)
	        ELSE substr(w.k, 1, $3 + strpos(substr(w.k, $3), '/') - 2) || '0' END)
	    AND s.key COLLATE "C" < $2 AND (s.ttl IS NULL OR s.ttl >= now())
	  ORDER BY s.key COLLATE "C" LIMIT 1)
	FROM walk w WHERE w.k IS NOT NULL
)
SELECT k FROM walk WHERE k IS NOT NULL`
)

// Lock rows: key "<key_prefix>/locks/<name>" (no certmagic key starts with
// '/', so no data key is ever a lock and List never shows one), value the
// owner's token, ttl the lease's end, on the server's clock.
const (
	// sqlAcquire inserts the lock row, or takes over an expired one; it
	// returns a row only when this token now holds the lock.
	sqlAcquire = `INSERT INTO acme_storage AS t (id, key, value, created_at, ttl)
VALUES ($1, $2, $3, now(), now() + make_interval(secs => $4))
ON CONFLICT (key) DO UPDATE SET value = excluded.value, created_at = excluded.created_at, ttl = excluded.ttl
WHERE t.ttl IS NULL OR t.ttl < now()
RETURNING true`

	// sqlRefresh extends the lease of a lock this token holds; it never
	// shortens one (RenewLockLease may have given a longer one).
	sqlRefresh = `UPDATE acme_storage SET ttl = greatest(ttl, now() + make_interval(secs => $3)) WHERE key = $1 AND value = $2`

	// sqlRelease deletes the lock row if this token holds it and, in the
	// same transaction, notifies the waiters: one round trip. Payloads are
	// limited to 8000 bytes; an empty one wakes every waiter.
	sqlRelease = `WITH d AS (DELETE FROM acme_storage WHERE key = $1 AND value = $2 RETURNING key)
SELECT pg_notify('` + notifyChannel + `', CASE WHEN octet_length(key) < 7900 THEN key ELSE '' END) FROM d`

	// notifyChannel is the LISTEN/NOTIFY channel of lock releases, shared
	// by every key_prefix (the payload is the lock row's key).
	notifyChannel = "caddy_acme_locks"
)

// Values: the value column is TEXT (UTF-8, no NUL), and certmagic values
// are bytes. A value that is valid UTF-8 without NUL is stored as it is
// (PEM and JSON stay readable, as in Kong's own rows); any other value, an
// encrypted one, or one that happens to start with the marker, is stored
// as marker + unpadded standard base64. Both decode in Load without another
// round trip.
const (
	marker    = "\x01b64:"
	markerSQL = `(chr(1) || 'b64:')` // marker in SQL, 5 characters
)

// encodeValue returns the column text for v (v itself when it can be
// stored as it is).
func encodeValue(v []byte, forceBase64 bool) []byte {
	if !forceBase64 && utf8.Valid(v) && bytes.IndexByte(v, 0) < 0 && !bytes.HasPrefix(v, []byte(marker)) {
		return v
	}
	out := make([]byte, len(marker)+base64.RawStdEncoding.EncodedLen(len(v)))
	copy(out, marker)
	base64.RawStdEncoding.Encode(out[len(marker):], v)
	return out
}

// decodeValue reverses encodeValue; it may reuse text.
func decodeValue(text []byte) ([]byte, error) {
	if !bytes.HasPrefix(text, []byte(marker)) {
		return text, nil
	}
	enc := text[len(marker):]
	out := make([]byte, base64.RawStdEncoding.DecodedLen(len(enc)))
	n, err := base64.RawStdEncoding.Decode(out, enc)
	if err != nil {
		return nil, errors.New("corrupt value: it has the base64 marker but is not base64")
	}
	return out[:n], nil
}

// decodedHead decodes the start of a column text, as much of it as
// decodes (text from sqlStat: 21 bytes of an encoded value).
func decodedHead(text []byte) []byte {
	if !bytes.HasPrefix(text, []byte(marker)) {
		return text
	}
	enc := text[len(marker):]
	if out, err := base64.RawStdEncoding.AppendDecode(nil, enc); err == nil {
		return out // all of a short value
	}
	// cut by sqlStat (28 characters): its whole groups of 4
	out, err := base64.RawStdEncoding.AppendDecode(nil, enc[:len(enc)/4*4])
	if err != nil {
		return nil
	}
	return out
}

// decodedLen is the length of the value a column text of n bytes decodes
// to (encoded: whether it starts with the marker).
func decodedLen(n int64, encoded bool) int64 {
	if !encoded {
		return n
	}
	return (n - int64(len(marker))) * 6 / 8
}

// succ returns the least string greater than every string that starts with
// p, for p ending in '/': p with its last byte '/' replaced by '0'.
func succ(p string) string {
	return strings.TrimSuffix(p, "/") + "0"
}
