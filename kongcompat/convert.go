package kongcompat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/acmekit/caddy-acme/internal/appconfig"
	"github.com/acmekit/caddy-acme/internal/directory"
)

// converter holds the state of one Adapt call.
type converter struct {
	file     string
	env      func(string) (string, bool)
	warnings []caddyconfig.Warning
	inv      *inventory
	kc       *kongConf
	res      *resolver

	declarative bool // the input is a declarative file (DB-less unless kong.conf says otherwise)
	database    string
	role        string
	databaseSet bool
	plugin      pluginRef
	// the acme app of the output and its storage module (nil: Caddy's
	// default storage), for the data migration
	adapted        *appconfig.Config
	adaptedStorage any
}

// warn records a warning about the Kong field at path (may be "").
func (c *converter) warn(line int, path, format string, args ...any) {
	c.warnings = append(c.warnings, caddyconfig.Warning{
		File:      c.file,
		Line:      line,
		Directive: path,
		Message:   fmt.Sprintf(format, args...),
	})
}

// errorf returns an error located at line of the input.
func (c *converter) errorf(line int, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	switch {
	case c.file != "" && line > 0:
		return fmt.Errorf("%s:%d: %s", c.file, line, msg)
	case c.file != "":
		return fmt.Errorf("%s: %s", c.file, msg)
	case line > 0:
		return fmt.Errorf("line %d: %s", line, msg)
	}
	return errors.New(msg)
}

// subject names the acme plugin in messages.
func (c *converter) subject() string {
	if c.plugin.loc == "" {
		return "acme plugin"
	}
	return "acme plugin (" + c.plugin.loc + ")"
}

func (c *converter) convert(body []byte, kongConfPath string) ([]byte, error) {
	if len(body) > MaxKongConfigSize { // checked before parsing: a huge input is refused at once
		return nil, c.errorf(0, "the Kong configuration is %d bytes, more than %s, the limit of the kong adapter (a declarative file of Kong's acme plugin is far smaller)", len(body), sizeString(MaxKongConfigSize))
	}
	root, err := parse(body)
	if err != nil {
		return nil, c.errorf(0, "%v", err)
	}
	if root.kind != kObject {
		return nil, c.errorf(root.line, "expected a Kong declarative file or an acme plugin object, got %s", root.kind.article())
	}
	c.inv = newInventory()
	switch {
	case root.has("_format_version"):
		c.declarative = true
		if err := c.formatVersion(root); err != nil {
			return nil, err
		}
		c.inv.declarative(root)
	case root.get("name") == nil && root.get("data") != nil && root.get("data").kind == kArray:
		c.inv.adminList(root.get("data"))
	case root.get("name") != nil:
		if name := root.get("name").text(); name != "acme" {
			return nil, c.errorf(root.line, "the plugin object is %q, not acme: this adapter migrates Kong's acme plugin", name)
		}
		c.inv.acme = append(c.inv.acme, pluginRef{v: root})
	default:
		return nil, c.errorf(root.line, "not a Kong declarative file (no _format_version) nor an acme plugin object as Kong's Admin API returns it (name: acme, config: {...})")
	}

	switch len(c.inv.acme) {
	case 0:
		return nil, c.errorf(0, "no acme plugin found: nothing to migrate")
	case 1:
	default:
		var where []string
		for _, p := range c.inv.acme {
			where = append(where, fmt.Sprintf("%s (line %d)", p.loc, p.v.line))
		}
		return nil, c.errorf(0, "%d acme plugins, at %s: Kong runs only one (the plugin is global), so keep the one you use", len(c.inv.acme), strings.Join(where, ", "))
	}
	c.plugin = c.inv.acme[0]

	c.kc, err = loadKongConf(kongConfPath, c.env)
	if err != nil {
		return nil, err
	}
	if c.database, c.role, c.databaseSet, err = c.kc.mode(); err != nil {
		return nil, err
	}
	if !c.databaseSet && c.declarative {
		c.database = "off" // Kong loads a declarative file in DB-less mode
	}
	c.res = &resolver{lookupEnv: c.env, vaults: c.inv.vaults}

	p := c.plugin.v
	if p.kind != kObject {
		return nil, c.errorf(p.line, "%s: expected a record", c.subject())
	}
	if e := p.get("enabled"); e != nil && e.kind == kBool && !e.b {
		return nil, c.errorf(p.line, "%s is disabled (enabled: false): Kong does not run it; enable it to migrate it", c.subject())
	}
	if err := c.validate(p); err != nil {
		return nil, err
	}
	app, err := c.app(p.get("config"))
	if err != nil {
		return nil, err
	}
	c.adapted = app
	for prefix := range c.res.used {
		if _, ok := c.inv.vaults[prefix]; ok {
			c.inv.use("vaults")
		}
	}
	if msg := c.inv.ignored(); msg != "" {
		// first: it is about the whole file
		c.warnings = append([]caddyconfig.Warning{{File: c.file, Message: msg}}, c.warnings...)
	}
	return c.caddyConfig(app)
}

func (c *converter) formatVersion(root *value) error {
	fv := root.get("_format_version")
	msg := ""
	switch {
	case fv == nil:
		msg = msgRequired
	case fv.kind != kString:
		msg = msgString
	case !contains(formatVersions, fv.str):
		msg = "expected one of: " + strings.Join(formatVersions, ", ")
	}
	if msg == "" {
		return nil
	}
	line := root.line
	if fv != nil {
		line = fv.line
	}
	return c.errorf(line, "declarative config is invalid: _format_version: %s", msg)
}

// validate checks the plugin entity with Kong's schema and entity checks
// and translates the deprecated Redis fields.
func (c *converter) validate(p *value) error {
	v := &validator{res: c.res}
	v.record(pluginFields, p, "")
	if v.err != nil {
		return c.errorf(p.line, "%s: %v", c.subject(), v.err)
	}
	for _, n := range v.nils {
		c.warn(n.line, n.path, `the value is the string "nil", which is used as given: YAML has no nil; write null (or leave the field out) for no value`)
	}
	if c.plugin.parent != "" {
		// nested under a service, route, consumer: Kong sets the foreign key
		v.vs.field(c.plugin.parent, msgNull)
	}
	cfg := p.get("config")
	if cfg != nil && cfg.kind == kObject {
		c.entityChecks(cfg, &v.vs)
		c.shorthands(cfg, &v.vs)
	}
	if !v.vs.empty() {
		msg := v.vs.String()
		if hint := c.modeHint(&v.vs); hint != "" {
			msg += ": " + hint
		}
		return c.errorf(p.line, "%s: %s", c.subject(), msg)
	}
	if pv := p.get("partials"); pv != nil && (pv.kind != kArray || len(pv.arr) != 0) {
		return c.errorf(pv.line, "%s: partials: Kong partials are not supported: write the Redis settings into storage_config.redis", c.subject())
	}
	if pv := p.get("_config"); pv != nil {
		return c.errorf(pv.line, "%s: _config: decK's _plugin_configs are not supported: write the configuration into the plugin's config", c.subject())
	}
	return nil
}

const (
	tosMessage = "terms of service must be accepted, see https://letsencrypt.org/repository/"
	dblessKong = `"kong" storage can't be used with dbless mode`
	hybridShm  = `"shm" storage can't be used in Hybrid mode`
	leProd     = "https://acme-v02.api.letsencrypt.org"
	leStaging  = "https://acme-staging-v02.api.letsencrypt.org"
	defaultAPI = directory.Default
)

// entityChecks runs the acme schema's entity checks.
func (c *converter) entityChecks(cfg *value, vs *violations) {
	api := defaultAPI
	if a := cfg.get("api_uri"); a != nil && a.kind == kString {
		api = a.str
	}
	tos := cfg.get("tos_accepted")
	if (api == leProd || api == leStaging) && (tos == nil || tos.kind != kBool || !tos.b) {
		vs.entity = append(vs.entity, tosMessage)
		vs.field("config.tos_accepted", "value must be true")
	}
	storage := c.storageName(cfg)
	redis := cfg.get("storage_config").get("redis")
	if storage == "redis" && redis.get("host") == nil && !nonEmpty(redis.get("cluster_nodes")) && !nonEmpty(redis.get("sentinel_nodes")) {
		vs.entity = append(vs.entity, "failed conditional validation given value of field 'config.storage'")
		vs.field("config.storage_config.redis.host", msgRequired)
	}
	if _, bad := vs.fields["config.storage"]; bad {
		return
	}
	if c.database == "off" && c.role != "data_plane" && storage == "kong" {
		vs.entity = append(vs.entity, dblessKong)
	}
	if c.role == "control_plane" && storage == "shm" {
		vs.entity = append(vs.entity, hybridShm)
	}
}

// modeHint explains a mode check that rests on an assumption.
func (c *converter) modeHint(vs *violations) string {
	if !contains(vs.entity, dblessKong) || c.databaseSet {
		return ""
	}
	return "a declarative file is loaded by a DB-less Kong, unless kong.conf says database = postgres: for a database-backed Kong, give its kong.conf (KONG_CONF=/etc/kong/kong.conf), whose pg_* settings the kong storage needs anyway"
}

func (c *converter) storageName(cfg *value) string {
	if s := cfg.get("storage"); s != nil && s.kind == kString {
		return s.str
	}
	return "shm"
}

// shorthands translates Kong's deprecated Redis fields into their
// replacements, as Kong does, refusing different values in both (Kong
// 3.8+) and warning with Kong's deprecation message.
func (c *converter) shorthands(cfg *value, vs *violations) {
	redis := cfg.get("storage_config").get("redis")
	if redis == nil || redis.kind != kObject {
		return
	}
	for _, s := range []struct {
		old    string
		newer  []string
		secret bool
	}{
		{"auth", []string{"password"}, true},
		{"ssl_server_name", []string{"server_name"}, false},
		{"namespace", []string{"extra_options", "namespace"}, false},
		{"scan_count", []string{"extra_options", "scan_count"}, false},
	} {
		old := redis.get(s.old)
		if old == nil {
			continue
		}
		parent := redis
		for _, k := range s.newer[:len(s.newer)-1] {
			next := parent.get(k)
			if next == nil || next.kind != kObject {
				next = &value{kind: kObject, line: old.line}
				parent.set(k, next)
			}
			parent = next
		}
		leaf := s.newer[len(s.newer)-1]
		newPath := strings.Join(s.newer, ".")
		cur := parent.get(leaf)
		if cur == nil {
			parent.set(leaf, old)
			c.warn(old.line, "config.storage_config.redis."+s.old,
				"acme: config.storage_config.redis.%s is deprecated, please use config.storage_config.redis.%s instead", s.old, newPath)
			continue
		}
		if sameValue(old, cur) {
			continue
		}
		ov, nv := show(old), show(cur)
		if s.secret {
			ov, nv = "(redacted)", "(redacted)"
		}
		vs.field("config.storage_config.redis."+s.old, fmt.Sprintf(
			"both deprecated and new field are used but their values mismatch: %s = %s vs %s = %s", s.old, ov, newPath, nv))
	}
}

func sameValue(a, b *value) bool {
	if a.kind != b.kind {
		return false
	}
	switch a.kind {
	case kString:
		return a.str == b.str
	case kNumber:
		return a.num == b.num
	case kBool:
		return a.b == b.b
	case kNull, kArray, kObject:
	}
	return false
}

// show formats a scalar as Kong's tostring does.
func show(v *value) string {
	switch v.kind {
	case kString:
		return v.str
	case kNumber:
		return strconv.FormatFloat(v.num, 'f', -1, 64)
	case kBool:
		return strconv.FormatBool(v.b)
	case kNull, kArray, kObject:
	}
	return v.kind.String()
}

// app maps the validated plugin config to the acme app.
func (c *converter) app(cfg *value) (*appconfig.Config, error) {
	a := &appconfig.Config{AccountEmail: caddyString(cfg.get("account_email"))}

	api := defaultAPI
	if v := cfg.get("api_uri"); v != nil {
		a.APIURI, api = v.str, v.str
		c.checkAPIURI(v)
	}
	if v := cfg.get("tos_accepted"); v != nil {
		a.TOSAccepted = v.b
	}
	if u, err := url.Parse(api); err == nil && !a.TOSAccepted {
		if h := strings.ToLower(u.Hostname()); h == "acme-v02.api.letsencrypt.org" || h == "acme-staging-v02.api.letsencrypt.org" {
			c.warn(lineOf(cfg, "tos_accepted", "api_uri"), "config.tos_accepted",
				"tos_accepted is false: Kong accepts %s without it (its check matches only the bare Let's Encrypt origins) and agrees to the terms anyway; caddy-acme requires tos_accepted: true for every Let's Encrypt directory, so the adapted config does not load until you set it (see https://letsencrypt.org/repository/)", api)
		}
	}

	kid, hmac := cfg.get("eab_kid"), cfg.get("eab_hmac_key")
	switch {
	case kid != nil && hmac != nil:
		a.EABKID, a.EABHMACKey = caddyString(kid), caddyString(hmac)
	case kid != nil:
		c.warn(kid.line, "config.eab_kid", "eab_kid is set without eab_hmac_key: Kong ignored it (no external account binding), and so does the adapted config")
	case hmac != nil:
		c.warn(hmac.line, "config.eab_hmac_key", "eab_hmac_key is set without eab_kid: Kong ignored it (no external account binding), and so does the adapted config")
	}

	if v := cfg.get("cert_type"); v != nil {
		a.CertType = v.str
	}
	if v := cfg.get("rsa_key_size"); v != nil {
		a.RSAKeySize = int(v.num)
	}
	for _, f := range []struct {
		name string
		out  **float64
	}{{"renew_threshold_days", &a.RenewThresholdDays}, {"fail_backoff_minutes", &a.FailBackoffMinutes}} {
		v := cfg.get(f.name)
		if v == nil {
			continue
		}
		n := v.num
		*f.out = &n
	}
	// caddy-acme's own limits (Kong has none), as the app checks them
	for _, f := range []struct {
		name string
		only appconfig.Config
	}{
		{"renew_threshold_days", appconfig.Config{RenewThresholdDays: a.RenewThresholdDays}},
		{"fail_backoff_minutes", appconfig.Config{FailBackoffMinutes: a.FailBackoffMinutes}},
	} {
		if err := f.only.CheckFields(); err != nil {
			return nil, c.errorf(lineOf(cfg, f.name), "%s: config.%v", c.subject(), err)
		}
	}
	if v := cfg.get("allow_any_domain"); v != nil {
		a.AllowAnyDomain = v.b
	}
	if v := cfg.get("enable_ipv4_common_name"); v != nil {
		b := v.b
		a.EnableIPv4CommonName = &b
	}
	if v := cfg.get("preferred_chain"); v != nil {
		a.PreferredChain = v.str
	}

	domains := cfg.get("domains")
	if domains != nil {
		ipv4 := a.EnableIPv4CommonName == nil || *a.EnableIPv4CommonName
		for _, d := range domains.arr {
			a.Domains = append(a.Domains, d.str)
		}
		if err := (&appconfig.Config{Domains: a.Domains}).CheckFields(); err != nil {
			line := domains.line // that of the first entry the app refuses
			for _, d := range domains.arr {
				if (&appconfig.Config{Domains: []string{d.str}}).CheckFields() != nil {
					line = d.line
					break
				}
			}
			return nil, c.errorf(line, "%s: config.%v: Kong accepts this entry, caddy-acme does not (no certificate can be obtained for it): correct or remove it", c.subject(), err)
		}
		for i, d := range domains.arr {
			path := fmt.Sprintf("config.domains.%d", i+1)
			switch {
			case strings.HasSuffix(d.str, ".*"):
				c.warn(d.line, path, "%q never matched anything in Kong; caddy-acme matches it (%s under any top-level domain, e.g. %s.com), so certificates are obtained for those names", d.str, strings.TrimSuffix(d.str, ".*"), strings.TrimSuffix(d.str, ".*"))
			case strings.ToLower(d.str) != d.str:
				c.warn(d.line, path, "%q never matched in Kong, which compared entries case-sensitively with lower-case names; caddy-acme matches names case-insensitively, so certificates are obtained for it", d.str)
			}
			if ip := net.ParseIP(d.str); ip != nil && ip.To4() != nil && ipv4 {
				c.warn(d.line, path, "%s is ordered as an ACME ip identifier; Kong ordered it as a dns identifier, which public CAs refuse", d.str)
			}
		}
	}
	if !a.AllowAnyDomain {
		if len(a.Domains) == 0 {
			line := cfg.line
			if domains != nil {
				line = domains.line
			}
			c.warn(line, "config.domains", "domains is empty and allow_any_domain is false: no certificate will be obtained (as in Kong)")
		}
		c.warn(0, "config.domains", "POST /acme (caddy-acme's admin API) orders a certificate only for a name that domains allows; Kong's Admin API ordered one for any host")
	}
	if c.backoffDiffers(cfg) {
		v := cfg.get("fail_backoff_minutes")
		line := cfg.line
		if v != nil {
			line = v.line
		}
		c.warn(line, "config.fail_backoff_minutes", "fail_backoff_minutes applies after a failed order only; Kong in database mode also applied it after a successful one (refusing a forced renewal with POST /acme for that long)")
	}

	if err := c.accountKey(cfg, a); err != nil {
		return nil, err
	}
	mod, raw, err := c.storage(cfg)
	if err != nil {
		return nil, err
	}
	a.StorageRaw, c.adaptedStorage = raw, mod
	return a, nil
}

// checkAPIURI warns when Kong requested another URL than caddy-acme will.
func (c *converter) checkAPIURI(v *value) {
	u, err := url.Parse(v.str)
	if err != nil || u.Path == "" || u.Path == "/" || strings.HasSuffix(u.Path, "/directory") {
		return
	}
	kong := strings.TrimSuffix(v.str, "/") + "/directory"
	c.warn(v.line, "config.api_uri", "Kong appends /directory to this URL and requests %s; caddy-acme uses a URL with a path as given (so CAs whose directory is elsewhere, such as Pebble's /dir, work): write %s if that is your CA's directory", kong, kong)
}

// backoffDiffers reports whether Kong ran in database mode, where a
// successful order also set the backoff.
func (c *converter) backoffDiffers(cfg *value) bool {
	if v := cfg.get("fail_backoff_minutes"); v != nil && v.num == 0 {
		return false
	}
	return c.database != "off"
}

func lineOf(obj *value, keys ...string) int {
	for _, k := range keys {
		if v := obj.get(k); v != nil {
			return v.line
		}
	}
	return obj.line
}

// caddyString returns a string value for a Caddy field that expands
// placeholders.
func caddyString(v *value) string {
	if v == nil {
		return ""
	}
	if v.dyn {
		return v.str
	}
	return escapeBraces(v.str)
}

// caddyConfig assembles the whole config: the app and the site wiring.
func (c *converter) caddyConfig(a *appconfig.Config) ([]byte, error) {
	route := func(handlers ...map[string]any) map[string]any { return map[string]any{"handle": handlers} }
	cfg := map[string]any{
		"apps": map[string]any{
			"acme": a,
			"tls": map[string]any{
				"automation": map[string]any{
					"policies": []any{map[string]any{"get_certificate": []any{map[string]any{"via": "acme"}}}},
				},
			},
			"http": map[string]any{
				"servers": map[string]any{
					"https": map[string]any{
						"listen": []string{":443"},
						// Kong's answer when no route matches: routes are not migrated
						"routes": []any{route(map[string]any{
							"handler":     "static_response",
							"status_code": 404,
							"headers":     map[string][]string{"Content-Type": {"application/json; charset=utf-8"}},
							"body":        `{"message":"no Route matched with those values"}`,
						})},
						"tls_connection_policies": []any{map[string]any{}},
					},
					"http": map[string]any{
						"listen": []string{":80"},
						"routes": []any{route(
							map[string]any{"handler": "acme_challenge"},
							map[string]any{
								"handler":     "static_response",
								"status_code": 308,
								"headers":     map[string][]string{"Location": {"https://{http.request.host}{http.request.uri}"}},
							},
						)},
					},
				},
			},
		},
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(cfg); err != nil {
		return nil, fmt.Errorf("encoding the config: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
