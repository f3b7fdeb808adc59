package kongcompat

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/acmekit/caddy-acme/issuance"
)

func init() {
	fs := flag.NewFlagSet("acme-migrate", flag.ExitOnError)
	fs.String("from", "", "Kong configuration holding the acme plugin (declarative file, or Admin API plugin JSON)")
	fs.String("kong-conf", "", "Kong's kong.conf (default: $KONG_CONF)")
	fs.String("config", "", "Caddy config whose acme app receives the data (default: the config adapted from --from)")
	fs.String("adapter", "", "Config adapter of --config")
	fs.Bool("apply", false, "Write into the target storage (default: dry run)")
	fs.String("account-key-file", "", "With --apply, also write Kong's ACME account key (PEM, mode 0600) to this file")
	fs.Duration("timeout", 5*time.Minute, "Give up after this long")
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "acme-migrate",
		Usage: "--from <kong.yml|plugin.json> [--kong-conf <kong.conf>] [--config <caddy.json> [--adapter <name>]] [--apply] [--account-key-file <path>]",
		Short: "Copies the ACME account and certificates of Kong's acme plugin into caddy-acme's storage",
		Long: `
Copies what Kong's acme plugin stored — its ACME account key and the
certificate and private key of every host — into the storage of caddy-acme's
acme app, in certmagic's layout, so that no certificate is ordered again on
the day of the switch and renewals use Kong's account.

Kong's side comes from the same configuration the kong adapter reads: --from
names a declarative file or an Admin API plugin object, with kong.conf from
--kong-conf or $KONG_CONF and Kong's KONG_PG_* variables. It says where Kong
kept its data (storage redis, consul, vault or kong, and in database mode the
certificates and snis tables tagged managed-by-acme) and with which api_uri
and account_email.

The target is the acme app of --config (with --adapter), or, by default, the
config the kong adapter makes of --from: its storage (or Caddy's global
storage), its api_uri (the storage keys depend on it), its account_email and
its domains (certificates for other names are not copied).

Without --apply nothing is written: every item is listed with what would be
copied or skipped and why. With --apply the certificates are written and the
account is looked up at the CA with Kong's key and saved. Running it again
copies nothing new ("already migrated"). A certificate the target holds that
expires later is never overwritten; expired and unreadable entries are
skipped. Private keys, passwords and tokens are never printed.
`,
		Flags: fs,
		Func:  cmdMigrate,
	})
}

func cmdMigrate(fl caddycmd.Flags) (int, error) {
	opts := MigrateOptions{
		From:           fl.String("from"),
		KongConf:       fl.String("kong-conf"),
		Config:         fl.String("config"),
		Adapter:        fl.String("adapter"),
		Apply:          fl.Bool("apply"),
		AccountKeyFile: fl.String("account-key-file"),
		Out:            os.Stdout,
	}
	timeout := fl.Duration("timeout")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// --timeout covers everything: Migrate stops its network work when ctx
	// ends, and what it cannot interrupt (reading a file that never ends
	// or blocks, parsing) is abandoned, as the process exits.
	type result struct {
		report *MigrateReport
		err    error
	}
	done := make(chan result, 1)
	go func() {
		report, err := Migrate(ctx, opts)
		done <- result{report, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		select {
		case res = <-done: // give it a moment to say where it stopped
		case <-time.After(2 * time.Second):
			return caddy.ExitCodeFailedStartup, fmt.Errorf("gave up after --timeout %s; items reported as copied are done, run the command again (with a longer --timeout) for the others", timeout)
		}
	}
	report, err := res.report, res.err
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("gave up after --timeout %s: %w", timeout, err)
	}
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if n := report.Count(ActionFail); n > 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("%d item(s) failed; the others are done: run the command again once the cause is fixed", n)
	}
	return caddy.ExitCodeSuccess, nil
}

// MigrateOptions configures Migrate.
type MigrateOptions struct {
	// From is the path of Kong's configuration holding the acme plugin:
	// a declarative file or an Admin API plugin object, as the kong
	// adapter reads them. REQUIRED.
	From string

	// KongConf is the path of Kong's kong.conf. Default: the KONG_CONF
	// environment variable; else none is read.
	KongConf string

	// Config is the path of the Caddy config whose acme app receives the
	// data, and Adapter its config adapter (as for caddy run). ConfigJSON
	// is a Caddy JSON config to use instead. Default: the config the kong
	// adapter makes of From.
	Config, Adapter string
	ConfigJSON      []byte

	// Apply writes into the target storage; otherwise nothing is written
	// (a dry run) and the CA is not contacted.
	Apply bool

	// AccountKeyFile, with Apply, receives Kong's ACME account key (PEM,
	// file mode 0600), for the app's account_key ({file.<path>}).
	AccountKeyFile string

	// Out receives the report, one line per item, as it is decided.
	// Default: nowhere (the items are in the returned report).
	Out io.Writer

	// LookupEnv reads Kong's environment variables (KONG_CONF, KONG_PG_*,
	// DECK_*). Default: os.LookupEnv. Caddy placeholders ({env.X}) are
	// always expanded from the process environment.
	LookupEnv func(string) (string, bool)

	// Now is the time expiry is judged by. Default: time.Now.
	Now func() time.Time
}

// What the migration does with an item.
const (
	ActionCopy = "copy" // copied (with Apply) or to be copied
	ActionSkip = "skip" // not copied, for the reason given
	ActionFail = "fail" // could not be read or written; the others go on
)

// MigrateItem is one line of the report: an account or a certificate
// (Kind "account", "certificate"), or a note about the run (Kind "note",
// no Action).
type MigrateItem struct {
	Kind   string
	Name   string // the host, or the account's email
	Action string
	Reason string
	From   string // where it is in Kong's stores
}

// MigrateReport is everything Migrate decided, in order.
type MigrateReport struct {
	Apply bool
	Items []MigrateItem
}

// Count returns the number of items with action.
func (r *MigrateReport) Count(action string) int {
	n := 0
	for _, it := range r.Items {
		if it.Action == action {
			n++
		}
	}
	return n
}

// Find returns the item of kind and name, if any.
func (r *MigrateReport) Find(kind, name string) (MigrateItem, bool) {
	for _, it := range r.Items {
		if it.Kind == kind && it.Name == name {
			return it, true
		}
	}
	return MigrateItem{}, false
}

// Line formats an item as the command prints it.
func (it MigrateItem) Line(apply bool) string {
	if it.Kind == "note" {
		return "note: " + it.Reason
	}
	verb := it.Action
	if apply && it.Action == ActionCopy {
		verb = "copied"
	}
	s := fmt.Sprintf("%-6s %s %s: %s", verb, it.Kind, it.Name, it.Reason)
	if it.From != "" {
		s += " (from " + it.From + ")"
	}
	return s
}

// Migrate copies the ACME account and certificates Kong's acme plugin
// stored into the acme app's storage in certmagic's layout (a dry run
// unless opts.Apply), and reports every item. An error means nothing
// could be migrated (a configuration or connection problem); items that
// fail alone are reported with ActionFail.
func Migrate(ctx context.Context, opts MigrateOptions) (*MigrateReport, error) {
	if opts.From == "" {
		return nil, errors.New("--from is required: the Kong configuration holding the acme plugin (kong.yml, or the Admin API's plugin object)")
	}
	m := &migration{opts: opts, report: &MigrateReport{Apply: opts.Apply}}
	if m.opts.LookupEnv == nil {
		m.opts.LookupEnv = os.LookupEnv
	}
	if m.opts.Now == nil {
		m.opts.Now = time.Now
	}
	if m.opts.Out == nil {
		m.opts.Out = io.Discard
	}
	if opts.Apply && opts.AccountKeyFile != "" {
		if err := checkAccountKeyFile(opts.AccountKeyFile); err != nil {
			return nil, err
		}
	}
	var err error
	if m.kong, err = loadKongSide(opts.From, opts.KongConf, m.opts.LookupEnv); err != nil {
		return nil, err
	}

	targetJSON, targetName := opts.ConfigJSON, "the given config"
	switch {
	case targetJSON != nil:
	case opts.Config != "":
		if _, err := readFileLimited(opts.Config, MaxCaddyConfigSize, "--config (the Caddy config)"); err != nil {
			if isTooLarge(err) {
				return nil, err
			}
			return nil, fmt.Errorf("loading the Caddy config: %w", err)
		}
		if targetJSON, _, _, err = caddycmd.LoadConfig(opts.Config, opts.Adapter); err != nil {
			return nil, fmt.Errorf("loading the Caddy config: %w", err)
		}
		targetName = opts.Config
	default:
		targetJSON, targetName = m.kong.adapted, "the config adapted from "+opts.From
	}
	cctx, cancel := caddy.NewContext(caddy.Context{Context: ctx})
	defer cancel()
	if m.t, err = openTarget(cctx, targetJSON); err != nil {
		return nil, err
	}
	defer m.t.close()

	if m.store, err = m.kong.openKongStore(ctx); err != nil {
		return nil, err
	}
	if m.store != nil {
		defer m.store.close()
	}
	if m.kong.dbMode {
		if pg, ok := m.store.(*postgresSource); ok {
			m.db = pg
		} else {
			if m.db, err = newPostgresSource(ctx, m.kong.db); err != nil {
				return nil, err
			}
			defer m.db.close()
		}
	}

	mode := "dry run: nothing is written and the CA is not contacted; run again with --apply to write"
	if opts.Apply {
		mode = "applying"
	}
	m.note(mode)
	m.note(fmt.Sprintf("from Kong (%s): %s", opts.From, m.describeKong()))
	m.note(fmt.Sprintf("to %s: %s, CA %s (issuer key %s), account_email %s", targetName, m.t.storageName, m.t.set.Directory, m.t.issuer.IssuerKey(), m.t.set.Email))
	if m.kong.dbNote != "" {
		m.note(m.kong.dbNote)
	}

	accountURL := m.account(ctx)
	if err := m.certificates(ctx, accountURL); err != nil {
		return nil, err
	}
	m.note("not copied: Kong's renew configs, backoffs, locks and pending challenges (caddy-acme keeps its own)")
	copied, skipped, failed := m.report.Count(ActionCopy), m.report.Count(ActionSkip), m.report.Count(ActionFail)
	if opts.Apply {
		m.note(fmt.Sprintf("done: %d copied, %d skipped, %d failed", copied, skipped, failed))
	} else {
		m.note(fmt.Sprintf("dry run: %d to copy, %d skipped, %d failed; run again with --apply to write", copied, skipped, failed))
	}
	return m.report, nil
}

// migration is the state of one Migrate call.
type migration struct {
	opts   MigrateOptions
	report *MigrateReport
	kong   *kongSide
	t      *target
	store  kongStore       // Kong's storage; nil for shm
	db     *postgresSource // Kong's database in database mode
}

func (m *migration) add(it MigrateItem) {
	m.report.Items = append(m.report.Items, it)
	fmt.Fprintln(m.opts.Out, it.Line(m.opts.Apply))
}

func (m *migration) note(msg string) { m.add(MigrateItem{Kind: "note", Reason: msg}) }

func (m *migration) describeKong() string {
	var parts []string
	switch m.kong.storage {
	case "shm":
		parts = append(parts, "storage shm (shared memory: not readable from outside Kong)")
	default:
		parts = append(parts, "storage "+m.kong.storage+" ("+m.store.where()+")")
	}
	if m.db != nil {
		parts = append(parts, "database mode: certificates in Kong's database "+m.db.name)
	}
	parts = append(parts, "api_uri "+m.kong.apiURI, "account_email "+m.kong.email)
	return strings.Join(parts, ", ")
}

// Account states in the target.
const (
	accountAbsent = iota
	accountSame
	accountOther
)

// probeAccount asks certmagic's account lookup, with writes refused and
// without reaching the CA, what the target holds for the app's email:
// nothing, the account of keyPEM (returned), or another account.
func (m *migration) probeAccount(ctx context.Context, keyPEM []byte) (int, acme.Account, *probeStorage, error) {
	probe := &probeStorage{Storage: m.t.storage}
	pctx, cancel := context.WithCancel(ctx)
	cancel() // certmagic reads storage (probeStorage ignores the cancellation), the CA is not asked
	iss, err := m.t.newIssuer(pctx, probe)
	if err != nil {
		return 0, acme.Account{}, probe, err
	}
	acct, err := iss.GetAccount(pctx, keyPEM)
	switch {
	case err == nil:
		return accountSame, acct, probe, nil
	case !probe.loaded:
		return 0, acct, probe, fmt.Errorf("certmagic read nothing: %w", err)
	case probe.firstErr == nil && !bytes.Equal(bytes.TrimSpace(probe.firstData), bytes.TrimSpace(keyPEM)):
		return accountOther, acct, probe, nil
	case probe.firstErr == nil, errors.Is(probe.firstErr, fs.ErrNotExist):
		return accountAbsent, acct, probe, nil // (the same key without its registration is completed)
	}
	return 0, acct, probe, fmt.Errorf("reading the target storage: %w", probe.firstErr)
}

// account migrates Kong's ACME account and returns its URL at the CA
// when known ("" otherwise).
func (m *migration) account(ctx context.Context) string {
	email := m.kong.email
	key := kongAccountKey(m.kong.apiURI, email)
	it := MigrateItem{Kind: "account", Name: email}
	if m.store == nil {
		it.Action, it.Reason = ActionSkip, "Kong kept its account in shared memory (storage shm), which cannot be read from outside Kong: the app registers an account of its own"
		m.add(it)
		return ""
	}
	it.From = m.store.describe(key)
	raw, found, err := m.store.get(ctx, key)
	if err != nil {
		it.Action, it.Reason = ActionFail, err.Error()
		m.add(it)
		return ""
	}
	if !found {
		it.Action, it.Reason = ActionSkip, "not in Kong's storage (Kong creates it at its first order): the app registers an account of its own"
		if others, err := m.store.list(ctx, kongAccountPrefix); err == nil && len(others) > 0 {
			sort.Strings(others)
			it.Reason += "; Kong's storage holds accounts for other api_uri or account_email values, which are not copied: " + strings.Join(others, ", ")
		}
		m.add(it)
		return ""
	}
	var v struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal([]byte(raw), &v); err != nil || v.Key == "" {
		it.Action, it.Reason = ActionSkip, `unparsable: not Kong's account JSON {"key": <PEM>}`
		m.add(it)
		return ""
	}
	priv, err := certmagic.PEMDecodePrivateKey([]byte(v.Key))
	if err != nil {
		it.Action, it.Reason = ActionSkip, "unparsable: the account key is not a PEM private key"
		m.add(it)
		return ""
	}
	keyPEM, err := certmagic.PEMEncodePrivateKey(priv) // as certmagic stores keys, so that it finds this one again
	if err != nil {
		it.Action, it.Reason = ActionSkip, "unparsable: the account key cannot be encoded"
		m.add(it)
		return ""
	}
	if m.t.set.AccountKey != "" {
		appKey, err := certmagic.PEMDecodePrivateKey([]byte(m.t.set.AccountKey))
		if err != nil || !samePublicKey(appKey, priv) {
			it.Action, it.Reason = ActionSkip, "the app's account_key is another key: the app uses that key's account, so Kong's is not copied (remove account_key, or set it to Kong's key, to keep Kong's account)"
			m.add(it)
			return ""
		}
	}
	if m.opts.Apply && m.opts.AccountKeyFile != "" {
		switch same, err := writeAccountKeyFile(m.opts.AccountKeyFile, keyPEM); {
		case err != nil:
			m.add(MigrateItem{Kind: "file", Name: m.opts.AccountKeyFile, Action: ActionFail, Reason: err.Error()})
		case same:
			m.note(fmt.Sprintf("%s already holds Kong's account key; the app's account_key can be {file.%s}", m.opts.AccountKeyFile, m.opts.AccountKeyFile))
		default:
			m.note(fmt.Sprintf("wrote Kong's account key to %s; the app's account_key can be {file.%s}", m.opts.AccountKeyFile, m.opts.AccountKeyFile))
		}
	}

	state, acct, probe, err := m.probeAccount(ctx, keyPEM)
	switch {
	case err != nil:
		it.Action, it.Reason = ActionFail, err.Error()
		m.add(it)
		return ""
	case state == accountSame:
		it.Action, it.Reason = ActionSkip, "already migrated (the CA knows it as "+acct.Location+")"
		m.add(it)
		return acct.Location
	case state == accountOther:
		it.Action, it.Reason = ActionSkip, fmt.Sprintf("the target already holds another account for %s at %s: it is kept, and renews the certificates as well (to use Kong's account instead, set the app's account_key to Kong's key: --account-key-file writes it)", m.t.set.Email, m.t.set.Directory)
		m.add(it)
		return ""
	}
	if !m.opts.Apply {
		it.Action, it.Reason = ActionCopy, fmt.Sprintf("Kong's account key; with --apply the account is looked up at %s with it (the CA's newAccount with onlyReturnExisting) and saved for account_email %s", m.t.set.Directory, m.t.set.Email)
		m.add(it)
		return ""
	}

	buf := &bufferStorage{Storage: m.t.storage}
	if probe.firstErr == nil {
		buf.hide = probe.first // Kong's key without its registration: look it up again
	}
	iss, err := m.t.newIssuer(ctx, buf)
	if err == nil {
		acct, err = iss.GetAccount(ctx, keyPEM)
	}
	if err != nil {
		if strings.Contains(err.Error(), acme.ProblemTypeAccountDoesNotExist) {
			it.Action, it.Reason = ActionSkip, fmt.Sprintf("%s has no account with Kong's key (Kong registers it at its first order, so it never ordered there): the app registers an account of its own", m.t.set.Directory)
		} else {
			it.Action, it.Reason = ActionFail, fmt.Sprintf("looking the account up at %s with Kong's key failed: %v; the certificates are copied without it: run again with --apply once the CA can be reached, or make the app use Kong's account by setting its account_key to Kong's key (--account-key-file writes it to a file)", m.t.set.Directory, err)
		}
		m.add(it)
		return ""
	}
	keys := buf.order
	values := make([][]byte, len(keys))
	for i, k := range keys {
		values[i] = buf.writes[k]
	}
	note := ""
	if contact := primaryContact(acct); !lowerEqual(contact, m.t.set.Email) {
		if contact == "" {
			contact = "none"
		}
		note = fmt.Sprintf(" (its contact at the CA: %s; saved for the app's account_email %s)", contact, m.t.set.Email)
		// certmagic saved it under the contact the CA returned (another
		// email, or none: CAs need not return or keep one), but the app
		// looks its account up by account_email: save it where certmagic
		// looked (the key certmagic read first, its registration beside
		// it); the second probe below checks that certmagic finds it there
		acct.Contact = []string{"mailto:" + m.t.set.Email}
		reg, err := json.MarshalIndent(acct, "", "\t")
		if err != nil {
			it.Action, it.Reason = ActionFail, "encoding the account: "+err.Error()
			m.add(it)
			return ""
		}
		keyPath := probe.first
		keys = []string{strings.TrimSuffix(keyPath, path.Ext(keyPath)) + ".json", keyPath}
		values = [][]byte{reg, keyPEM}
	}
	if err := storeAll(ctx, m.t.storage, keys, values); err != nil {
		it.Action, it.Reason = ActionFail, "saving the account: "+err.Error()
		m.add(it)
		return ""
	}
	if state, _, _, err := m.probeAccount(ctx, keyPEM); err != nil || state != accountSame {
		it.Action, it.Reason = ActionFail, fmt.Sprintf("saved the account, but certmagic does not find it for account_email %s (%v): set the app's account_key to Kong's key instead", m.t.set.Email, err)
		m.add(it)
		return ""
	}
	it.Action, it.Reason = ActionCopy, "Kong's account, which the CA knows as "+acct.Location+note
	m.add(it)
	return acct.Location
}

func primaryContact(a acme.Account) string {
	if len(a.Contact) == 0 {
		return ""
	}
	c := a.Contact[0]
	if i := strings.Index(c, ":"); i >= 0 {
		c = c[i+1:]
	}
	return c
}

func samePublicKey(a, b crypto.PrivateKey) bool {
	pa, ok := a.(interface{ Public() crypto.PublicKey })
	if !ok {
		return false
	}
	pb, ok := b.(interface{ Public() crypto.PublicKey })
	if !ok {
		return false
	}
	eq, ok := pa.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(pb.Public())
}

// kongCert is one certificate Kong stored for a host, as read.
type kongCert struct {
	host    string
	from    string
	cert    string
	key     string
	problem string // why it is unusable, found while reading

	chainPEM []byte // parsed: the chain, re-encoded
	keyPEM   []byte // the key, encoded as certmagic encodes keys
	leaf     *x509.Certificate
}

// certificates reads every certificate Kong stored and migrates, per
// host, the one that expires last.
func (m *migration) certificates(ctx context.Context, accountURL string) error {
	var certs []*kongCert
	renewHosts := make(map[string]string)
	if m.store != nil {
		keys, err := m.store.list(ctx, kongCertKeyPrefix)
		if err != nil {
			return err
		}
		sort.Strings(keys)
		for _, k := range keys {
			c := &kongCert{host: strings.TrimPrefix(k, mangle(kongCertKeyPrefix)), from: m.store.describe(k)}
			raw, found, err := m.store.get(ctx, k)
			switch {
			case err != nil:
				return err
			case !found:
				continue // expired or deleted since listed
			}
			var v struct {
				Key  string `json:"key"`
				Cert string `json:"cert"`
			}
			if err := json.Unmarshal([]byte(raw), &v); err != nil || v.Key == "" || v.Cert == "" {
				c.problem = `unparsable: not Kong's JSON {"key": <PEM>, "cert": <PEM chain>}`
			}
			c.cert, c.key = v.Cert, v.Key
			certs = append(certs, c)
		}
		renew, err := m.store.list(ctx, kongRenewConfigPrefix)
		if err != nil {
			return err
		}
		for _, k := range renew {
			renewHosts[normalizeName(strings.TrimPrefix(k, mangle(kongRenewConfigPrefix)))] = m.store.describe(k)
		}
	}
	if m.db != nil {
		rows, err := m.db.managedCertificates(ctx)
		if err != nil {
			return err
		}
		for _, r := range rows {
			if r.hasNoSNI {
				m.add(MigrateItem{
					Kind: "certificate", Name: "(id " + r.id + ")", Action: ActionSkip,
					Reason: "tagged managed-by-acme but no SNI names it, so Kong did not serve it", From: m.db.describeEntity(r, false),
				})
				continue
			}
			certs = append(certs, &kongCert{host: r.sni, from: m.db.describeEntity(r, false), cert: r.cert, key: r.key})
			if r.hasAlt {
				certs = append(certs, &kongCert{host: r.sni, from: m.db.describeEntity(r, true), cert: r.certAlt, key: r.keyAlt})
			}
		}
	}

	byHost := make(map[string][]*kongCert)
	for _, c := range certs {
		c.host = normalizeName(c.host)
		if c.problem == "" {
			c.problem = c.parse(m.opts.Now())
		}
		byHost[c.host] = append(byHost[c.host], c)
	}
	hosts := make([]string, 0, len(byHost))
	for h := range byHost {
		hosts = append(hosts, h)
	}
	for h := range renewHosts {
		if _, ok := byHost[h]; !ok {
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		cands := byHost[h]
		if len(cands) == 0 {
			m.add(MigrateItem{
				Kind: "certificate", Name: h, Action: ActionSkip, From: renewHosts[h],
				Reason: "Kong has a renew config for it but no certificate (Kong drops it at its next renewal run)",
			})
			continue
		}
		m.host(ctx, h, cands, accountURL)
	}
	return nil
}

// parse checks a certificate and its key; it returns why it cannot be
// used, or "". The reasons never hold key material.
func (c *kongCert) parse(now time.Time) string {
	if strings.HasPrefix(strings.TrimSpace(c.key), "{vault://") || strings.HasPrefix(strings.TrimSpace(c.cert), "{vault://") {
		return "unparsable: a Kong vault reference ({vault://…}), which only Kong can resolve"
	}
	pair, err := tls.X509KeyPair([]byte(c.cert), []byte(c.key))
	if err != nil {
		msg := "the certificate and key do not form a pair"
		switch {
		case !strings.Contains(c.cert, "-----BEGIN"):
			msg = "the certificate is not PEM"
		case !strings.Contains(c.key, "-----BEGIN"):
			msg = "the private key is not PEM"
		case strings.Contains(err.Error(), "does not match"):
			msg = "the private key does not match the certificate"
		}
		return "unparsable: " + msg
	}
	var chain bytes.Buffer
	for _, der := range pair.Certificate {
		if _, err := x509.ParseCertificate(der); err != nil {
			return "unparsable: a certificate of the chain cannot be parsed"
		}
		_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	c.leaf = pair.Leaf
	if c.keyPEM, err = certmagic.PEMEncodePrivateKey(pair.PrivateKey); err != nil {
		return "unparsable: the private key cannot be encoded"
	}
	c.chainPEM = chain.Bytes()
	if err := c.leaf.VerifyHostname(c.host); err != nil {
		return fmt.Sprintf("the certificate is not for %s (it names %s)", c.host, strings.Join(certNames(c.leaf), ", "))
	}
	if !now.Before(c.leaf.NotAfter) {
		return "expired " + c.leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	return ""
}

func certNames(leaf *x509.Certificate) []string {
	names := append([]string(nil), leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		names = append(names, leaf.Subject.CommonName)
	}
	return names
}

func normalizeName(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
}

// host migrates the best of the certificates Kong had for host and
// reports the others.
func (m *migration) host(ctx context.Context, host string, cands []*kongCert, accountURL string) {
	var best *kongCert
	for _, c := range cands {
		if c.problem == "" && (best == nil || c.leaf.NotAfter.After(best.leaf.NotAfter)) {
			best = c
		}
	}
	for _, c := range cands {
		if c == best {
			continue
		}
		reason := c.problem
		if reason == "" {
			reason = "superseded by the certificate that expires later, " + best.from
		}
		m.add(MigrateItem{Kind: "certificate", Name: host, Action: ActionSkip, Reason: reason, From: c.from})
	}
	if best == nil {
		return
	}
	it := MigrateItem{Kind: "certificate", Name: host, From: best.from}
	expires := best.leaf.NotAfter.UTC().Format(time.RFC3339)
	if m.t.set.Allow(host) != nil {
		it.Action, it.Reason = ActionSkip, "not allowed by the app's domains (it would never be served): add it to domains and run again to copy it"
		m.add(it)
		return
	}
	action, reason, err := m.compare(ctx, host, best)
	if err != nil {
		it.Action, it.Reason = ActionFail, err.Error()
		m.add(it)
		return
	}
	it.Action, it.Reason = action, reason
	if action == ActionCopy && reason == "" {
		it.Reason = "expires " + expires
	}
	if action == ActionCopy && m.opts.Apply {
		if action, reason, err = m.write(ctx, host, best, accountURL); err != nil {
			it.Action, it.Reason = ActionFail, err.Error()
		} else if action != ActionCopy {
			it.Action, it.Reason = action, reason
		}
	}
	m.add(it)
}

// compare decides against what the target holds for host: copy (with a
// reason if it replaces a certificate), or skip.
func (m *migration) compare(ctx context.Context, host string, c *kongCert) (string, string, error) {
	keys := issuance.Site(m.t.issuer.IssuerKey(), host)
	data, err := m.t.storage.Load(ctx, keys.Cert)
	if errors.Is(err, fs.ErrNotExist) {
		return ActionCopy, "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("reading the target: %w", err)
	}
	block, _ := pem.Decode(data)
	var have *x509.Certificate
	if block != nil {
		have, _ = x509.ParseCertificate(block.Bytes)
	}
	switch {
	case have == nil:
		return ActionCopy, "expires " + c.leaf.NotAfter.UTC().Format(time.RFC3339) + "; replaces an unreadable certificate in the target", nil
	case have.Equal(c.leaf):
		complete := m.t.storage.Exists(ctx, keys.Key) && m.t.storage.Exists(ctx, keys.Meta)
		if complete {
			return ActionSkip, "already migrated", nil
		}
		return ActionCopy, "completes an earlier, partial copy", nil
	case !have.NotAfter.Before(c.leaf.NotAfter):
		return ActionSkip, fmt.Sprintf("the target holds a newer certificate for it (expires %s; Kong's expires %s)",
			have.NotAfter.UTC().Format(time.RFC3339), c.leaf.NotAfter.UTC().Format(time.RFC3339)), nil
	}
	return ActionCopy, fmt.Sprintf("expires %s; replaces the target's older certificate (expires %s)",
		c.leaf.NotAfter.UTC().Format(time.RFC3339), have.NotAfter.UTC().Format(time.RFC3339)), nil
}

// write stores host's certificate as certmagic does after obtaining it
// (saveCertResource: the private key, the chain, the metadata with the
// ACME issuer's data), under certmagic's issuance lock for host, so that
// no node orders it meanwhile; the target is compared again under the
// lock.
func (m *migration) write(ctx context.Context, host string, c *kongCert, accountURL string) (string, string, error) {
	lockName := issuance.IssueLockKey(host) // certmagic's lock for obtaining or renewing host
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	err := m.t.storage.Lock(lctx, lockName)
	cancel()
	if err != nil {
		return "", "", fmt.Errorf("taking the storage lock %s (a node may be ordering it): %w", lockName, err)
	}
	defer func() { _ = m.t.storage.Unlock(context.WithoutCancel(ctx), lockName) }()
	if action, reason, err := m.compare(ctx, host, c); err != nil || action != ActionCopy {
		return action, reason, err
	}
	issuerData, err := json.Marshal(acme.Certificate{CA: m.t.set.Directory, Account: accountURL})
	if err != nil {
		return "", "", err
	}
	res := certmagic.CertificateResource{SANs: []string{host}, IssuerData: issuerData}
	meta, err := json.MarshalIndent(res, "", "\t")
	if err != nil {
		return "", "", err
	}
	keys := issuance.Site(m.t.issuer.IssuerKey(), res.NamesKey())
	if err := storeAll(ctx, m.t.storage, []string{keys.Key, keys.Cert, keys.Meta}, [][]byte{c.keyPEM, c.chainPEM, meta}); err != nil {
		return "", "", err
	}
	return ActionCopy, "", nil
}
