package issuance

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// The app's CAs: the primary (Options.Issuer) and the fallback CAs
// (Options.Fallback), which certmagic asks in that order until one issues
// (Magic.Issuers). Each CA has its own pause, rate limits and backoffs
// (keyed by its issuer key): an order of a name goes to the CAs that are
// usable for it now, so a CA that is down, rate limited or refused the
// name is skipped while that lasts and never holds the next one up. Each
// CA keeps its certificates under its own issuer key; the newest one of a
// name is the one served, renewed and listed (certmagic loads the newest
// of the issuers' too).

// caState is one of the app's CAs.
type caState struct {
	issuer Issuer
	key    string  // its issuer key
	pause  caPause // this node's pause of orders to it
}

// newCAStates returns the states of the CAs of opts, primary first.
func newCAStates(opts Options) []*caState {
	cas := make([]*caState, 0, 1+len(opts.Fallback))
	cas = append(cas, &caState{issuer: opts.Issuer, key: opts.Issuer.IssuerKey()})
	for _, iss := range opts.Fallback {
		cas = append(cas, &caState{issuer: iss, key: iss.IssuerKey()})
	}
	return cas
}

// caByKey returns the CA whose issuer key is key (nil: none of the app's).
func (r *Runtime) caByKey(key string) *caState {
	for _, c := range r.cas {
		if c.key == key {
			return c
		}
	}
	return nil
}

// usableCAs returns the CAs an order of name may go to now, in order: not
// paused on this node, name not in backoff there, and, with rateLimits,
// not rate limited for it. The records of every CA not paused are read in
// one round trip (LoadMany). With none, the error says why for each (a
// BackoffError or PauseError, as errors.As finds them); a storage error is
// returned as it is.
func (r *Runtime) usableCAs(ctx context.Context, name string, rateLimits bool) ([]*caState, error) {
	paused := make([]error, len(r.cas))
	var keys []string
	for i, c := range r.cas {
		if paused[i] = c.pause.check(c.key); paused[i] != nil {
			continue
		}
		if rateLimits {
			for _, scope := range rateLimitScopes(name) {
				keys = append(keys, RateLimitKey(c.key, scope))
			}
		}
		if r.opts.FailBackoff > 0 {
			keys = append(keys, BackoffKey(c.key, name))
		}
	}
	var values [][]byte
	var errs []error
	if len(keys) > 0 {
		values, errs = LoadMany(ctx, r.storage, keys)
	}
	read := 0 // the next of keys to look at
	var usable []*caState
	var why []error
	for i, c := range r.cas {
		err := paused[i]
		if err == nil && rateLimits {
			for _, scope := range rateLimitScopes(name) {
				if err == nil {
					err = r.rateLimitVerdict(c, name, scope, values[read], errs[read])
				}
				read++
			}
		}
		if paused[i] == nil && r.opts.FailBackoff > 0 {
			if err == nil {
				err = r.backoffVerdict(name, keys[read], values[read], errs[read])
			}
			read++
		}
		if err == nil {
			usable = append(usable, c)
			continue
		}
		_, backoff := errors.AsType[BackoffError](err)
		_, pause := errors.AsType[PauseError](err)
		if !backoff && !pause {
			return nil, err // reading storage
		}
		why = append(why, err)
	}
	if len(usable) > 0 {
		return usable, nil
	}
	if len(why) == 1 {
		return nil, why[0]
	}
	return nil, caErrors(why)
}

// caErrors is why no CA may be asked for a name: one error per CA, the
// primary's first.
type caErrors []error

func (e caErrors) Error() string {
	var b strings.Builder
	b.WriteString("no CA may be asked now: ")
	for i, err := range e {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e caErrors) Unwrap() []error { return e }

// magicFor returns the certmagic configuration whose issuers are those of
// usable, in order: the app's own when all its CAs are usable, else a
// shallow copy (as Caddy's TLS app makes one per handshake) with fewer
// issuers.
func (r *Runtime) magicFor(usable []*caState) *certmagic.Config {
	if len(usable) == len(r.cas) {
		return r.magic
	}
	m := *r.magic
	m.Issuers = nil
	for _, iss := range r.magic.Issuers {
		if isUsable(usable, iss.IssuerKey()) {
			m.Issuers = append(m.Issuers, iss)
		}
	}
	return &m
}

// isUsable reports whether the CA whose issuer key is given is in usable.
func isUsable(usable []*caState, key string) bool {
	for _, c := range usable {
		if c.key == key {
			return true
		}
	}
	return false
}

// afterOrder acts on each CA's verdict on an order or renewal of name
// (err: how it ended): the CA that issued, or refused, or rate limited
// answered (its pause ends); a refusal backs the name off at that CA
// (when backoff: orders, not the scan's renewals); a rate limit pauses
// its scope there; an unreachable CA is paused on this node.
func (r *Runtime) afterOrder(name string, w watched, err error, backoff bool) {
	for i, v := range w.cas {
		c := r.caByKey(v.ca)
		if c == nil {
			r.logger.Debug("an order reached a CA that is not the app's", zap.String("ca", v.ca))
			continue
		}
		switch {
		case err == nil && i == len(w.cas)-1: // it issued
			r.caAnswered(c)
		case v.refused:
			r.caAnswered(c)
			if backoff {
				r.setBackoff(c, name, v.reason)
			}
		case v.rateLimited != nil:
			r.caAnswered(c)
			r.setRateLimit(c, name, v.rateLimited, v.retryAfter)
		case v.unreachable != nil:
			r.caUnreachable(c, name, v.unreachable)
		}
	}
}

// storedCert is the stored certificate of a name at one CA.
type storedCert struct {
	ca      *caState
	leaf    *x509.Certificate
	meta    []byte // its metadata, when asked for and readable
	metaErr error  // why not
}

// loadNewest reads names' certificates (and their metadata, withMeta)
// under every CA's issuer key in one storage batch, and returns for each
// name the newest one (the latest NotBefore), the one certmagic serves.
// errs[i] when none can be read: the primary CA's error (wrapping
// fs.ErrNotExist when there is none; no storage path in it).
func (r *Runtime) loadNewest(ctx context.Context, names []string, withMeta bool) ([]storedCert, []error) {
	per := 1
	if withMeta {
		per = 2
	}
	stride := per * len(r.cas)
	keys := make([]string, 0, stride*len(names))
	for _, name := range names {
		for _, c := range r.cas {
			k := Site(c.key, name)
			keys = append(keys, k.Cert)
			if withMeta {
				keys = append(keys, k.Meta)
			}
		}
	}
	values, loadErrs := LoadMany(ctx, r.storage, keys)

	out, errs := make([]storedCert, len(names)), make([]error, len(names))
	for i, name := range names {
		var best storedCert
		for j, c := range r.cas {
			at := stride*i + per*j
			var leaf *x509.Certificate
			err := loadErrs[at]
			if err != nil {
				err = storageErr("loading certificate for "+name, err)
			} else {
				leaf, err = parseLeaf(name, values[at])
			}
			if err != nil {
				if j == 0 {
					errs[i] = err
				}
				continue
			}
			if best.leaf != nil && !leaf.NotBefore.After(best.leaf.NotBefore) {
				continue
			}
			best = storedCert{ca: c, leaf: leaf}
			if withMeta {
				best.meta, best.metaErr = values[at+1], loadErrs[at+1]
			}
		}
		if best.leaf != nil {
			out[i], errs[i] = best, nil
		}
	}
	return out, errs
}

// storedAtAnyCA reports whether a certificate of name is stored under any
// CA's issuer key.
func (r *Runtime) storedAtAnyCA(ctx context.Context, name string) bool {
	for _, c := range r.cas {
		if r.storage.Exists(ctx, Site(c.key, name).Cert) {
			return true // the first found: no more round trips
		}
	}
	return false
}

// holders returns the CAs under whose issuer key a certificate of name is
// stored.
func (r *Runtime) holders(ctx context.Context, name string) []*caState {
	var out []*caState
	for _, c := range r.cas {
		if r.storage.Exists(ctx, Site(c.key, name).Cert) {
			out = append(out, c)
		}
	}
	return out
}
