package issuance

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/allowlist"
)

// Domains added at run time (the admin API's /acme/domains): a SaaS
// operator adds a customer's domain without a config reload. The entries
// are those of the app's `domains` field (exact names, "*.example.com",
// "example.*"), validated and normalised by allowlist.New as that field's
// are. They are kept in one JSON record in the shared storage
// (DomainsKey), changed under the storage lock domainsLock so that nodes
// changing it at once lose nothing. Every node reads the record at Start
// and every CacheSyncInterval into a compiled allowlist.Matcher that the
// handshake path consults without touching storage (domainListed); a node
// that changes the list applies it at once. A name is served if the
// configured domains or this list allow it (see ErrNotListed).

// Errors of the domain list's operations, wrapped with the detail.
var (
	// ErrNotListed is wrapped by the error of Options.Allow for a name
	// refused only because no entry of the configured domains matches it.
	// The runtime then allows the name if the domains added at run time
	// (AddDomains) list it.
	ErrNotListed = errors.New("not listed in domains")

	// ErrDomainNotFound: RemoveDomain's entry is not in the list.
	ErrDomainNotFound = errors.New("domain entry not found")

	// ErrInvalidDomain: an entry is not a valid `domains` entry; the
	// error names the entry and why. Nothing was changed.
	ErrInvalidDomain = errors.New("invalid domain entry")

	// ErrTooManyDomains: the list would hold more than MaxDomains
	// entries. Nothing was changed.
	ErrTooManyDomains = errors.New("too many domain entries")

	// ErrDomainsUnreadable: the stored record does not parse (written by
	// someone else). It is not overwritten: nothing was changed, and each
	// node keeps the last list it read until the record is fixed or
	// deleted.
	ErrDomainsUnreadable = errors.New("stored domain list unreadable")
)

// MaxDomains is the most entries the stored domain list holds.
const MaxDomains = 100000

// domainsTimeout bounds one read or change of the domain list through the
// API, storage lock included.
const domainsTimeout = time.Minute

// domainsRefreshTimeout bounds one refresh: Start waits for the first, and
// each later one delays the change log's read of the same sync tick.
const domainsRefreshTimeout = 15 * time.Second

// domainsRecord is the JSON record at DomainsKey.
type domainsRecord struct {
	// The normalised entries, sorted.
	Domains []string `json:"domains"`
}

// domainList is this node's view of the stored domain list.
type domainList struct {
	// the list last read or written, compiled; nil: none (matches
	// nothing)
	matcher atomic.Pointer[allowlist.Matcher]

	// mu serialises each read of the record (refresh) and each write by
	// this node with the publication of its result, so that an older
	// read never replaces a newer change made here.
	mu      sync.Mutex // protects applied, bad
	applied [32]byte   // recordSum of the record matcher holds
	bad     [32]byte   // recordSum of the last unreadable record logged
}

// recordSum identifies a record's content (nil: no record), so that an
// unchanged record is neither parsed nor compiled again.
func recordSum(data []byte) [32]byte {
	if data == nil {
		return [32]byte{}
	}
	h := sha256.New()
	h.Write([]byte{1})
	h.Write(data)
	return [32]byte(h.Sum(nil))
}

// apply makes m, compiled from the record whose recordSum is sum, this
// node's list. The caller holds d.mu.
func (d *domainList) apply(m *allowlist.Matcher, sum [32]byte) {
	d.matcher.Store(m)
	d.applied = sum
	d.bad = [32]byte{}
}

// domainListed reports whether the domains added at run time allow name,
// a normalised server name. It reads no storage: it costs a few map
// lookups per label of name, however long the list.
func (r *Runtime) domainListed(name string) bool {
	return r.domains.matcher.Load().Match(name)
}

// Domains returns the domain list, read from storage now: the normalised
// entries, sorted (empty, not nil, when there are none). An unreadable
// record is an error wrapping ErrDomainsUnreadable.
func (r *Runtime) Domains(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, domainsTimeout)
	defer cancel()
	data, err := r.loadDomains(ctx)
	if err != nil {
		return nil, err
	}
	m, err := parseDomains(data)
	if err != nil {
		return nil, err
	}
	return sortedEntries(m), nil
}

// AddDomains adds entries to the stored domain list and returns the whole
// list, sorted. Entries already listed (also in another case, encoding or
// with a trailing dot) are kept once. If any entry is invalid
// (ErrInvalidDomain), the list would exceed MaxDomains
// (ErrTooManyDomains) or the stored record is unreadable
// (ErrDomainsUnreadable), nothing is stored. This node serves the new
// entries at once, the others within their CacheSyncInterval.
func (r *Runtime) AddDomains(ctx context.Context, entries []string) ([]string, error) {
	add, err := allowlist.New(entries)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidDomain, err)
	}
	for _, e := range add.Entries() {
		// an address the app never serves (enable_ipv4_common_name,
		// enable_ipv6) is refused rather than listed for nothing
		if _, ok := allowlist.NormalizeIP(e); !ok {
			continue
		}
		if err := r.opts.Allow(e); err != nil && !errors.Is(err, ErrNotListed) {
			return nil, fmt.Errorf("%w: %w", ErrInvalidDomain, err)
		}
	}
	return r.changeDomains(ctx, func(cur *allowlist.Matcher) ([]string, bool, error) {
		next, err := allowlist.New(append(cur.Entries(), add.Entries()...))
		if err != nil {
			return nil, false, err // both lists are valid already
		}
		if next.Len() == cur.Len() {
			return nil, false, nil
		}
		if next.Len() > MaxDomains {
			return nil, false, fmt.Errorf("%w: adding %d entries would list %d, at most %d are allowed",
				ErrTooManyDomains, next.Len()-cur.Len(), next.Len(), MaxDomains)
		}
		return next.Entries(), true, nil
	})
}

// RemoveDomain removes entry (normalised first, as AddDomains does) from
// the stored domain list: an error wrapping ErrDomainNotFound if it is not
// listed, ErrInvalidDomain if it is not a valid entry, ErrDomainsUnreadable
// if the stored record is unreadable. This node stops serving names only
// entry allowed at once, the others within their CacheSyncInterval;
// certificates already obtained stay in storage.
func (r *Runtime) RemoveDomain(ctx context.Context, entry string) error {
	one, err := allowlist.New([]string{entry})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidDomain, err)
	}
	norm := one.Entries()[0]
	_, err = r.changeDomains(ctx, func(cur *allowlist.Matcher) ([]string, bool, error) {
		entries := cur.Entries()
		i := slices.Index(entries, norm)
		if i < 0 {
			return nil, false, fmt.Errorf("%w: %s", ErrDomainNotFound, norm)
		}
		return slices.Delete(entries, i, i+1), true, nil
	})
	return err
}

// changeDomains reads the stored list under the storage lock, asks change
// for the next one (changed false: keep it) and stores that. It returns the
// resulting list, sorted.
func (r *Runtime) changeDomains(ctx context.Context, change func(cur *allowlist.Matcher) (next []string, changed bool, err error)) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, domainsTimeout)
	defer cancel()
	if err := r.storage.Lock(ctx, domainsLock); err != nil {
		return nil, fmt.Errorf("locking %s: %w", domainsLock, err)
	}
	defer r.storage.Unlock(context.WithoutCancel(ctx), domainsLock) //nolint:errcheck // the lease expires anyway

	data, err := r.loadDomains(ctx)
	if err != nil {
		return nil, err
	}
	cur, err := parseDomains(data)
	if err != nil {
		return nil, fmt.Errorf("%w; fix or delete it: nothing was changed", err)
	}
	next, changed, err := change(cur)
	if err != nil {
		return nil, err
	}
	d := r.domains
	if !changed {
		d.mu.Lock()
		d.apply(cur, recordSum(data))
		d.mu.Unlock()
		return sortedEntries(cur), nil
	}

	m, err := allowlist.New(next)
	if err != nil {
		return nil, err
	}
	rec := domainsRecord{Domains: sortedEntries(m)}
	data, err = json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := r.storage.Store(ctx, DomainsKey, data); err != nil {
		return nil, fmt.Errorf("storing %s: %w", DomainsKey, err)
	}
	d.apply(m, recordSum(data))
	r.logger.Info("domain list changed", zap.Int("entries", len(rec.Domains)))
	return rec.Domains, nil
}

// refreshDomains reads the stored domain list into this node's matcher.
// A record that does not parse is logged (once per content) and the last
// list read is kept; so is it when storage fails.
func (r *Runtime) refreshDomains(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, domainsRefreshTimeout)
	defer cancel()
	d := r.domains
	d.mu.Lock()
	defer d.mu.Unlock()
	data, err := r.loadDomains(ctx)
	if err != nil {
		if r.ctx.Err() == nil {
			r.logger.Warn("reading the domain list from storage; keeping the last one read", zap.String("key", DomainsKey), zap.Error(err))
		}
		return
	}
	sum := recordSum(data)
	if sum == d.applied {
		return
	}
	m, err := parseDomains(data)
	if err != nil {
		if sum != d.bad {
			d.bad = sum
			r.logger.Error("the stored domain list does not parse; keeping the last one read, and refusing changes until it is fixed or deleted",
				zap.String("key", DomainsKey), zap.Int("last_entries", d.matcher.Load().Len()), zap.Error(err))
		}
		return
	}
	d.apply(m, sum)
	r.logger.Info("domain list read from storage", zap.Int("entries", m.Len()))
}

// loadDomains reads the record at DomainsKey; nil, without an error, when
// there is none.
func (r *Runtime) loadDomains(ctx context.Context) ([]byte, error) {
	data, err := r.storage.Load(ctx, DomainsKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", DomainsKey, err)
	}
	if data == nil {
		data = []byte{} // a record, empty: unreadable, unlike none
	}
	return data, nil
}

// parseDomains compiles a record (nil: none, an empty list); its errors
// wrap ErrDomainsUnreadable.
func parseDomains(data []byte) (*allowlist.Matcher, error) {
	var rec domainsRecord
	if data != nil {
		if err := json.Unmarshal(data, &rec); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrDomainsUnreadable, DomainsKey, err)
		}
	}
	m, err := allowlist.New(rec.Domains)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrDomainsUnreadable, DomainsKey, err)
	}
	return m, nil
}

// sortedEntries returns m's entries, sorted.
func sortedEntries(m *allowlist.Matcher) []string {
	entries := m.Entries()
	if entries == nil {
		entries = []string{}
	}
	slices.Sort(entries)
	return entries
}
