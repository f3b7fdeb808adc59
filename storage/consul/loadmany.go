package consul

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/hashicorp/consul/api"
)

// LoadMany loads keys with read-only Consul transactions of up to
// loadManyOps "get-or-empty" operations each (at most loadManyTxns of them
// in flight): the renewal scan of the acme app reads certificates this way.
// values[i] and errs[i] are keys[i]'s, as Load would return them: invalid
// keys get Load's error without failing the others, chunked values are
// read from their chunks as Load reads them, and a failed transaction gives
// each of its keys the error ("loading <key>: consul: ...").
//
// Two things of Consul's transactions are allowed for. A read transaction
// leaves out, without an error, the results of keys the token may not read
// (where Get answers 403): such keys are read again with Load, for its
// error. And get-or-empty answers a missing key with a pair of its own
// making (the key, no value, index 0): a stored pair always has a non-zero
// CreateIndex.
func (s *Storage) LoadMany(ctx context.Context, keys []string) ([][]byte, []error) {
	values, errs := make([][]byte, len(keys)), make([]error, len(keys))
	// Each distinct valid key is read once.
	var uniq []string
	at := make([]int, len(keys)) // index in uniq of keys[i], -1 if invalid
	seen := make(map[string]int, len(keys))
	for i, key := range keys {
		k, err := fileKey(key)
		if err != nil {
			errs[i], at[i] = fmt.Errorf("loading: %w", err), -1
			continue
		}
		u, ok := seen[k]
		if !ok {
			u = len(uniq)
			seen[k] = u
			uniq = append(uniq, k)
		}
		at[i] = u
	}
	uv, ue := make([][]byte, len(uniq)), make([]error, len(uniq))
	sem := make(chan struct{}, loadManyTxns)
	var wg sync.WaitGroup
	for lo := 0; lo < len(uniq); {
		hi := s.batchEnd(uniq, lo)
		batch, bv, be := uniq[lo:hi], uv[lo:hi], ue[lo:hi]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.loadTxn(ctx, batch, bv, be)
		})
		lo = hi
	}
	wg.Wait()
	given := make([]bool, len(uniq))
	for i, u := range at {
		if u < 0 {
			continue
		}
		values[i], errs[i] = uv[u], ue[u]
		if given[u] && values[i] != nil {
			values[i] = bytes.Clone(values[i]) // a repeated key gets its own copy, as from Load
		}
		given[u] = true
	}
	return values, errs
}

// batchEnd returns the end of the transaction that starts with uniq[lo]:
// at most loadManyOps keys, and no more than loadManyBytes of request (a
// key may take six times its length in JSON, as \u00XX escapes), so that
// long keys keep the request within Consul's txn_max_req_len. A single key
// too long for it is sent alone.
func (s *Storage) batchEnd(uniq []string, lo int) int {
	hi, size := lo, 0
	for hi < len(uniq) && hi-lo < loadManyOps {
		op := 6*len(s.dataKey(uniq[hi])) + loadManyOpOverhead
		if hi > lo && size+op > loadManyBytes {
			break
		}
		size += op
		hi++
	}
	return hi
}

// loadTxn loads the (distinct, valid) keys ks with one transaction into
// values and errs, which are ks's.
func (s *Storage) loadTxn(ctx context.Context, ks []string, values [][]byte, errs []error) {
	failAll := func(err error) {
		for j, k := range ks {
			errs[j] = s.fail("loading", k, err)
		}
	}
	if err := ctx.Err(); err != nil {
		failAll(err)
		return
	}
	ops := make(api.TxnOps, len(ks))
	for j, k := range ks {
		// The namespace and partition go into each operation as well: by
		// Consul's txn API, an operation without them is in the token's
		// namespace, where Get uses the request's (?ns=, ?partition=).
		ops[j] = &api.TxnOp{KV: &api.KVTxnOp{
			Verb: api.KVGetOrEmpty, Key: s.dataKey(k),
			Namespace: s.conn.namespace, Partition: s.conn.partition,
		}}
	}
	tctx, cancel := context.WithTimeout(ctx, s.timeout)
	ok, resp, _, err := s.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(tctx))
	cancel()
	if err == nil && !ok {
		err = txnErrors(resp)
	}
	if err != nil {
		failAll(err)
		return
	}
	pairs := make(map[string]*api.KVPair, len(resp.Results))
	for _, r := range resp.Results {
		if r != nil && r.KV != nil {
			pairs[r.KV.Key] = r.KV
		}
	}
	for j, k := range ks {
		pair, found := pairs[s.dataKey(k)]
		switch {
		case !found:
			// Hidden from the token: Load reports it as Load does.
			values[j], errs[j] = s.Load(ctx, k)
		case pair.CreateIndex == 0:
			errs[j] = notExist("loading", k)
		default:
			values[j], errs[j] = s.openPair(ctx, k, pair)
		}
	}
}

// openPair is Load after its Get: the value of pair, read at k (from its
// chunks if it is a manifest, within s.timeout) and opened.
func (s *Storage) openPair(ctx context.Context, k string, pair *api.KVPair) ([]byte, error) {
	data := pair.Value
	if pair.Flags&flagChunked != 0 {
		ctx, cancel := context.WithTimeout(ctx, s.timeout)
		defer cancel()
		var err error
		if data, err = s.loadChunks(ctx, k, pair); err != nil {
			return nil, err
		}
	}
	value, err := s.rt.Sealer.Open(k, data)
	if err != nil {
		return nil, err
	}
	if value == nil {
		value = []byte{}
	}
	return value, nil
}

const (
	// loadManyOps is the most keys LoadMany reads in one transaction: the
	// limit Consul's KV API documentation gives (Consul 1.15's agent
	// accepts 128, maxTxnOps).
	loadManyOps = 64
	// loadManyTxns is the most transactions LoadMany has in flight: a
	// scan batch of 256 certificates (512 keys) in one wave; 8 scanned
	// 20 000 certificates ~20% faster than 4, 16 no faster (BENCHMARKS.md).
	loadManyTxns = 8
	// loadManyBytes bounds the JSON request of one transaction, well
	// within Consul's default txn_max_req_len of 512 KiB.
	loadManyBytes = 256 << 10
	// loadManyOpOverhead is the JSON of a get-or-empty operation besides
	// its key (verb, value, flags, index, session, namespace, partition).
	loadManyOpOverhead = 256
)
