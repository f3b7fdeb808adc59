package issuance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/net/publicsuffix"
)

// The budget of new certificates per registered domain (domain_budget).
//
// Let's Encrypt issues at most 50 new certificates per registered domain
// (example.com for a.b.example.com) per 7 days. With `*.example.com`
// allowed, a client asking for random names below example.com would use
// that up and keep every other name below it from getting a certificate
// for a week. The budget refuses new orders for a registered domain once
// it had Limit new certificates in Window, cluster-wide, before the CA
// does.
//
// The count of a registered domain is a record in the shared storage
// (BudgetKey) listing the names counted in the window, each with when it
// was counted and whether it is only reserved (an order in progress) or
// issued. reserve and its release read, change and write it under the
// storage lock budgetLockPrefix+domain, so that nodes reserving at once
// never count more than Limit. What the record says:
//
//   - A name counts once per window: reserving a name already counted as
//     issued takes no new slot (the CA treats an order for the same names
//     as an earlier certificate as a renewal, which this limit exempts),
//     and reserving a name another order reserved takes that reservation
//     over.
//   - A reservation whose order failed is given back (release(false)); one
//     never released (the node crashed, or could not write the release)
//     stops counting after the reservation TTL (budgetReservationTTL,
//     longer than an order may take).
//   - Issued entries older than Window, and reservations older than the
//     TTL, are dropped whenever the record is written.
//   - A record that does not parse (written by something else, or
//     damaged) is replaced by a fresh one with a warning naming its key:
//     refusing every order of the domain forever would be worse, and the
//     CA's own limit still stands behind the budget.
//
// A node that found a registered domain over budget remembers until when
// (its earliest free slot), so that the handshakes that follow are
// refused from memory (check) without a storage read. A slot that another
// node gives back meanwhile is seen by this node when that time comes.

// budgetReservationTTL is how long a reservation counts without being
// released: longer than any order takes (the issue timeout bounds an
// order, 90s by default).
const budgetReservationTTL = 10 * time.Minute

// maxBudgetDenials bounds the registered domains a node remembers as over
// budget (the names come from clients).
const maxBudgetDenials = 10000

// defaultBudgetWindow is Let's Encrypt's window for its limit of new
// certificates per registered domain.
const defaultBudgetWindow = 7 * 24 * time.Hour

// budgetLockPrefix + a registered domain is the name of the storage lock
// held while its record is read and written.
const budgetLockPrefix = "caddy_acme_budget_"

// RegisteredDomain returns the registered domain of name, as the public
// suffix list (with its private section, as Let's Encrypt counts) defines
// it: example.co.uk for a.b.example.co.uk, foo.github.io for
// x.foo.github.io. An IP address, a single label and a name that is
// itself a public suffix are their own registered domain.
func RegisteredDomain(name string) string {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if !strings.Contains(name, ".") || net.ParseIP(name) != nil {
		return name
	}
	domain, err := publicsuffix.EffectiveTLDPlusOne(name)
	if err != nil {
		return name
	}
	return domain
}

// BudgetError is the error for a new certificate refused because its
// registered domain used up its budget (domain_budget).
type BudgetError struct {
	Name   string        // the name refused
	Domain string        // its registered domain
	Limit  int           // the budget: new certificates per Window
	Window time.Duration // the budget's window
	Next   time.Time     // when the next slot frees (UTC)
	Wait   time.Duration // how long from the refusal until Next
}

func (e BudgetError) Error() string {
	return fmt.Sprintf("no new certificate for %s: its registered domain %s had its budget of %d new certificates in %s; the next slot frees at %s (in %s); this is configurable with domain_budget (0 disables the budget)",
		e.Name, e.Domain, e.Limit, formatWindow(e.Window), e.Next.UTC().Format(time.RFC3339), e.Wait.Round(time.Second))
}

// formatWindow writes a window in days when it is a whole number of days.
func formatWindow(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d == day:
		return "1 day"
	case d > 0 && d%day == 0:
		return strconv.FormatInt(int64(d/day), 10) + " days"
	default:
		return d.String()
	}
}

// budgetRecord is what storage holds at BudgetKey.
type budgetRecord struct {
	Domain       string        `json:"domain"`
	Certificates []budgetEntry `json:"certificates"`
}

// budgetEntry is one name counted against a registered domain's budget.
type budgetEntry struct {
	Name string    `json:"name"`
	Time time.Time `json:"time"` // when reserved, or when issued
	// Reserved: an order is in progress (Token identifies its
	// reservation); it counts until the TTL unless released.
	Reserved bool   `json:"reserved,omitempty"`
	Token    string `json:"token,omitempty"`
}

// frees is when e stops counting.
func (e budgetEntry) frees(window, ttl time.Duration) time.Time {
	if e.Reserved {
		return e.Time.Add(ttl)
	}
	return e.Time.Add(window)
}

// prune drops the entries that no longer count at now.
func (rec *budgetRecord) prune(now time.Time, window, ttl time.Duration) {
	rec.Certificates = slices.DeleteFunc(rec.Certificates, func(e budgetEntry) bool {
		return !e.frees(window, ttl).After(now)
	})
}

// find returns the index of name's entry, or -1.
func (rec *budgetRecord) find(name string) int {
	return slices.IndexFunc(rec.Certificates, func(e budgetEntry) bool { return e.Name == name })
}

// budget counts new certificates per registered domain at one CA,
// cluster-wide (see the comment at the top of this file). A nil *budget
// allows everything.
type budget struct {
	storage certmagic.Storage
	caKey   string
	limit   int
	window  time.Duration
	ttl     time.Duration // how long a reservation counts unreleased
	logger  *zap.Logger
	now     func() time.Time

	mu     sync.Mutex // protects denied
	denied map[string]BudgetError
}

// newBudget returns the budget of limit new certificates per registered
// domain in window (default 7 days) at the CA with caKey (its issuer key),
// counted in storage; nil when limit is 0 or less.
func newBudget(storage certmagic.Storage, caKey string, limit int, window time.Duration, logger *zap.Logger) *budget {
	if limit <= 0 {
		return nil
	}
	if window <= 0 {
		window = defaultBudgetWindow
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	return &budget{
		storage: storage,
		caKey:   caKey,
		limit:   limit,
		window:  window,
		ttl:     budgetReservationTTL,
		logger:  logger,
		now:     time.Now,
		denied:  make(map[string]BudgetError),
	}
}

// check returns the BudgetError if this node found name's registered
// domain over budget and its next slot has not freed yet; nil otherwise.
// It reads no storage.
func (b *budget) check(name string) error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.denied) == 0 {
		return nil
	}
	domain := RegisteredDomain(name)
	e, ok := b.denied[domain]
	if !ok {
		return nil
	}
	now := b.now()
	if !e.Next.After(now) {
		delete(b.denied, domain)
		return nil
	}
	e.Name, e.Wait = name, e.Next.Sub(now)
	return e
}

// remember notes that e.Domain is over budget until e.Next. A full map is
// swept of the domains whose slot has freed, then of the one that frees
// first.
func (b *budget) remember(e BudgetError) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.denied[e.Domain]; !ok && len(b.denied) >= maxBudgetDenials {
		now := b.now()
		for d, old := range b.denied {
			if !old.Next.After(now) {
				delete(b.denied, d)
			}
		}
		if len(b.denied) >= maxBudgetDenials {
			first := ""
			for d, old := range b.denied {
				if first == "" || old.Next.Before(b.denied[first].Next) {
					first = d
				}
			}
			delete(b.denied, first)
		}
	}
	b.denied[e.Domain] = e
}

// forget drops what this node remembers of domain being over budget.
func (b *budget) forget(domain string) {
	b.mu.Lock()
	delete(b.denied, domain)
	b.mu.Unlock()
}

// reserve takes a slot of name's registered domain for a new certificate,
// or returns a BudgetError if there is none. release ends the
// reservation: release(false) (the order failed) gives the slot back,
// release(true) (issued) keeps it for the window. A name already counted
// as issued in the window takes no slot. release may be called once; it
// logs its own storage errors (an unreleased reservation stops counting
// after the TTL).
func (b *budget) reserve(ctx context.Context, name string) (release func(issued bool), err error) {
	if b == nil {
		return func(bool) {}, nil
	}
	domain := RegisteredDomain(name)
	token := newBudgetToken()
	var denied *BudgetError
	counted := false
	err = b.update(ctx, domain, func(rec *budgetRecord, now time.Time) bool {
		if i := rec.find(name); i >= 0 {
			e := &rec.Certificates[i]
			if !e.Reserved {
				counted = true
				return false
			}
			// another order's reservation (an order of the same name
			// waits for certmagic's issue lock): this one takes it over
			e.Time, e.Token = now, token
			return true
		}
		if len(rec.Certificates) >= b.limit {
			next := rec.Certificates[0].frees(b.window, b.ttl)
			for _, e := range rec.Certificates[1:] {
				if t := e.frees(b.window, b.ttl); t.Before(next) {
					next = t
				}
			}
			denied = &BudgetError{
				Name:   name,
				Domain: domain,
				Limit:  b.limit,
				Window: b.window,
				Next:   next.UTC(),
				Wait:   next.Sub(now),
			}
			return false
		}
		rec.Certificates = append(rec.Certificates, budgetEntry{Name: name, Time: now.UTC(), Reserved: true, Token: token})
		return true
	})
	if err != nil {
		return nil, err
	}
	if denied != nil {
		b.remember(*denied)
		return nil, *denied
	}
	b.forget(domain)
	if counted {
		return func(bool) {}, nil
	}
	var once sync.Once
	return func(issued bool) {
		once.Do(func() { b.release(domain, name, token, issued) })
	}, nil
}

// release ends the reservation of name with token: an issued certificate
// is counted from now (also when its reservation expired meanwhile); a
// failed order's reservation is dropped unless another order took it over.
func (b *budget) release(domain, name, token string, issued bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := b.update(ctx, domain, func(rec *budgetRecord, now time.Time) bool {
		i := rec.find(name)
		switch {
		case issued && i >= 0:
			rec.Certificates[i] = budgetEntry{Name: name, Time: now.UTC()}
		case issued:
			rec.Certificates = append(rec.Certificates, budgetEntry{Name: name, Time: now.UTC()})
		case i >= 0 && rec.Certificates[i].Reserved && rec.Certificates[i].Token == token:
			rec.Certificates = slices.Delete(rec.Certificates, i, i+1)
		default:
			return false
		}
		return true
	})
	if err != nil {
		b.logger.Error("recording the end of a reservation in the budget of new certificates",
			zap.String("identifier", name),
			zap.String("domain", domain),
			zap.Bool("issued", issued),
			zap.Error(err))
		return
	}
	if !issued {
		b.forget(domain) // a slot is free again
	}
}

// update reads domain's record under its storage lock, drops what no
// longer counts, hands it to change, and writes it if change reports a
// change (or if pruning or a damaged record changed it).
func (b *budget) update(ctx context.Context, domain string, change func(rec *budgetRecord, now time.Time) bool) error {
	key := BudgetKey(b.caKey, domain)
	lock := budgetLockPrefix + domain
	if err := b.storage.Lock(ctx, lock); err != nil {
		return fmt.Errorf("budget of new certificates for %s: locking %s: %w", domain, lock, err)
	}
	defer func() {
		if err := b.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			b.logger.Error("unlocking the budget of new certificates",
				zap.String("lock_key", lock),
				zap.Error(err))
		}
	}()

	rec := budgetRecord{Domain: domain}
	write := false
	data, err := b.storage.Load(ctx, key)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("budget of new certificates for %s: reading %s: %w", domain, key, err)
	default:
		if err := json.Unmarshal(data, &rec); err != nil {
			b.logger.Warn("replacing an unreadable record of the budget of new certificates",
				zap.String("key", key),
				zap.Error(err))
			rec, write = budgetRecord{Domain: domain}, true
		}
	}
	now := b.now()
	n := len(rec.Certificates)
	rec.prune(now, b.window, b.ttl)
	write = len(rec.Certificates) != n || write
	if change(&rec, now) {
		write = true
	}
	if !write {
		return nil
	}
	rec.Domain = domain
	if data, err = json.Marshal(rec); err != nil {
		return fmt.Errorf("budget of new certificates for %s: %w", domain, err)
	}
	if err := b.storage.Store(ctx, key, data); err != nil {
		return fmt.Errorf("budget of new certificates for %s: writing %s: %w", domain, key, err)
	}
	return nil
}

// newBudgetToken returns a random reservation token.
func newBudgetToken() string {
	var buf [8]byte
	_, _ = rand.Read(buf[:])
	return hex.EncodeToString(buf[:])
}

// budgetDenied counts a handshake or order for name refused by the
// budget, and tells the app.
func (r *Runtime) budgetDenied(name string, err error) {
	metrics.budgetDenials.Inc()
	if r.opts.OnBudgetDenied != nil {
		r.opts.OnBudgetDenied(name, err)
	}
}
