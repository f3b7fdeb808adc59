package kongcompat

import (
	"fmt"
	"math"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// This file reproduces the part of Kong's schema validation
// (kong/db/schema/init.lua) that the acme plugin's schema uses, with
// Kong's messages, and the plugin's schema itself
// (kong/plugins/acme/schema.lua, Kong 3.x, plus the Redis fields of Kong
// Enterprise's shared Redis schema).

// ftype is a Kong schema field type.
type ftype uint8

const (
	tString ftype = iota
	tNumber
	tInteger
	tBoolean
	tRecord
	tArray
	tSet
	tForeign // a foreign key that must be null (no_service, no_route, …)
	tAny     // anything (records whose shape Kong leaves open)
)

// field is one field of a Kong schema.
type field struct {
	name     string
	typ      ftype
	required bool
	emptyOK  bool // strings: len_min = 0 (Kong's default is 1)
	oneOf    []string
	oneOfNum []float64
	between  *[2]float64
	fields   []*field // record
	elem     *field   // array, set
	check    func(string) string
	// referenceable fields accept Kong vault references
	// ({vault://env/NAME}); secret fields are credentials: decK
	// templates in them become Caddy placeholders instead of values, and
	// their values never appear in messages.
	referenceable bool
	secret        bool
}

func (f *field) lookup(name string) *field {
	for _, sub := range f.fields {
		if sub.name == name {
			return sub
		}
	}
	return nil
}

// Kong's validation messages (validation_errors in
// kong/db/schema/init.lua).
const (
	msgArray    = "expected an array"
	msgSet      = "expected a set"
	msgRecord   = "expected a record"
	msgString   = "expected a string"
	msgNumber   = "expected a number"
	msgBoolean  = "expected a boolean"
	msgInteger  = "expected an integer"
	msgRequired = "required field missing"
	msgUnknown  = "unknown field"
	msgNull     = "value must be null"
)

// violations collects Kong's schema errors for one entity: entity-check
// errors and field errors keyed by the field's dotted path.
type violations struct {
	entity []string
	fields map[string]string
}

func (vs *violations) field(path, msg string) {
	if vs.fields == nil {
		vs.fields = make(map[string]string)
	}
	if _, ok := vs.fields[path]; !ok {
		vs.fields[path] = msg
	}
}

func (vs *violations) empty() bool { return len(vs.entity) == 0 && len(vs.fields) == 0 }

// String formats the errors as Kong's schema_violation does: entity
// errors first, then field errors sorted by path.
func (vs *violations) String() string {
	buf := append([]string(nil), vs.entity...)
	paths := make([]string, 0, len(vs.fields))
	for p := range vs.fields {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		buf = append(buf, p+": "+vs.fields[p])
	}
	if len(buf) == 1 {
		return "schema violation (" + buf[0] + ")"
	}
	return fmt.Sprintf("%d schema violations (%s)", len(buf), strings.Join(buf, "; "))
}

// validator checks a value tree against a schema. Before checking a
// value it resolves decK templates and Kong vault references in it (and
// stores the result in the tree).
type validator struct {
	vs   violations
	res  *resolver
	err  error     // first resolution error: not a schema violation
	nils []*nilRef // string fields whose value is "nil"
}

// nilRef is a string field whose value is the string "nil", which Kong's
// documentation examples use as if it were null.
type nilRef struct {
	path string
	line int
}

// record checks the members of obj against fields.
func (c *validator) record(fields []*field, obj *value, path string) {
	for i, key := range obj.keys {
		f := (&field{fields: fields}).lookup(key)
		p := join(path, key)
		if f == nil {
			c.vs.field(p, msgUnknown)
			continue
		}
		obj.vals[i] = c.field(f, obj.vals[i], p)
	}
	for _, f := range fields {
		if f.required && obj.get(f.name) == nil {
			c.vs.field(join(path, f.name), msgRequired)
		}
	}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// field checks one value and returns it, resolved.
func (c *validator) field(f *field, v *value, path string) *value {
	v = c.resolve(f, v, path)
	if f.typ == tString && v.kind == kString && v.str == "nil" && !v.dyn {
		c.nils = append(c.nils, &nilRef{path: path, line: v.line})
	}
	if msg := c.check(f, v, path); msg != "" {
		c.vs.field(path, msg)
	}
	return v
}

// resolve replaces decK templates and vault references in a string value.
func (c *validator) resolve(f *field, v *value, path string) *value {
	if c.res == nil || v.kind != kString || v.dyn {
		return v
	}
	out, err := c.res.value(f, v, path)
	if err != nil {
		if c.err == nil {
			c.err = err
		}
		return v
	}
	return out
}

// check returns Kong's message for v, or "" if it is valid; it checks
// records and collections recursively (their errors go to c.vs).
func (c *validator) check(f *field, v *value, path string) string {
	if v.kind == kNull {
		if f.required {
			return msgRequired
		}
		return ""
	}
	if v.dyn { // a reference or placeholder: Kong validates its value when it resolves it
		return ""
	}
	switch f.typ {
	case tAny:
		return ""
	case tForeign:
		return msgNull
	case tString:
		if v.kind != kString {
			return msgString
		}
		if len(f.oneOf) > 0 && !contains(f.oneOf, v.str) {
			return "expected one of: " + strings.Join(f.oneOf, ", ")
		}
		if v.str == "" && !f.emptyOK {
			return "length must be at least 1"
		}
		if f.check != nil {
			return f.check(v.str)
		}
	case tNumber, tInteger:
		if v.kind != kNumber {
			if f.typ == tInteger {
				return msgInteger
			}
			return msgNumber
		}
		if f.typ == tInteger && v.num != math.Trunc(v.num) {
			return msgInteger
		}
		if len(f.oneOfNum) > 0 {
			ok := false
			var opts []string
			for _, o := range f.oneOfNum {
				ok = ok || o == v.num
				opts = append(opts, strconv.FormatFloat(o, 'f', -1, 64))
			}
			if !ok {
				return "expected one of: " + strings.Join(opts, ", ")
			}
		}
		if b := f.between; b != nil && (v.num < b[0] || v.num > b[1]) {
			return fmt.Sprintf("value should be between %d and %d", int64(b[0]), int64(b[1]))
		}
	case tBoolean:
		if v.kind != kBool {
			return msgBoolean
		}
	case tRecord:
		if v.kind != kObject {
			return msgRecord
		}
		c.record(f.fields, v, path)
	case tArray, tSet:
		if v.kind != kArray {
			if f.typ == tSet {
				return msgSet
			}
			return msgArray
		}
		// Kong reports the first invalid element, on the collection
		elem := *f.elem
		elem.required = true
		for i, e := range v.arr {
			e = c.resolve(&elem, e, path)
			v.arr[i] = e
			if elem.typ == tRecord && e.kind == kObject {
				c.record(elem.fields, e, path)
				continue
			}
			if msg := c.check(&elem, e, path); msg != "" {
				return msg
			}
		}
	}
	return ""
}

func contains(list []string, s string) bool { return slices.Contains(list, s) }

// Kong's host validators (typedefs.lua over kong/tools/ip.lua).

// normalizeIP is Kong's normalize_ip: it returns the address type and an
// error message, and whether a port was given.
func normalizeIP(address string) (typ string, hasPort bool, errMsg string) {
	typ = hostnameType(address)
	switch typ {
	case "ipv4":
		hasPort, errMsg = normalizeIPv4(address)
	case "ipv6":
		hasPort, errMsg = normalizeIPv6(address)
	default:
		hasPort, errMsg = checkHostname(address)
	}
	return typ, hasPort, errMsg
}

func hostnameType(name string) string {
	if strings.Count(name, ":") > 1 {
		return "ipv6"
	}
	rest := strings.ReplaceAll(name, ":", "")
	if rest != "" && strings.Trim(rest, "0123456789.") == "" {
		return "ipv4"
	}
	return "name"
}

var (
	ipv4Port = regexp.MustCompile(`^(\d\d?\d?)\.(\d\d?\d?)\.(\d\d?\d?)\.(\d\d?\d?):(\d+)$`)
	ipv4     = regexp.MustCompile(`^(\d\d?\d?)\.(\d\d?\d?)\.(\d\d?\d?)\.(\d\d?\d?)$`)
	ipv6     = regexp.MustCompile(`^[0-9A-Fa-f]{1,4}(:[0-9A-Fa-f]{1,4}){7}$`)
	hostRE   = regexp.MustCompile(`^[0-9A-Za-z\-._]+$`)
)

func normalizeIPv4(address string) (bool, string) {
	var m []string
	if strings.Contains(address, ":") {
		m = ipv4Port.FindStringSubmatch(address)
	} else {
		m = ipv4.FindStringSubmatch(address)
	}
	if m == nil {
		return false, "invalid ipv4 address: " + address
	}
	for _, o := range m[1:5] {
		if n, _ := strconv.Atoi(o); n > 255 {
			return false, "invalid ipv4 address: " + address
		}
	}
	if len(m) > 5 && m[5] != "" {
		if n, err := strconv.Atoi(m[5]); err != nil || n > 65535 {
			return true, "invalid port number"
		}
		return true, ""
	}
	return false, ""
}

func normalizeIPv6(address string) (bool, string) {
	check, hasPort := address, false
	if strings.HasPrefix(address, "[") {
		if end := strings.IndexByte(address, ']'); end > 0 {
			check = address[1:end]
			if rest := address[end+1:]; rest != "" {
				digits := strings.TrimPrefix(rest, ":")
				if digits == rest || digits == "" || strings.Trim(digits, "0123456789") != "" {
					return false, "invalid ipv6 address"
				}
				if n, err := strconv.Atoi(digits); err != nil || n > 65535 {
					return true, "invalid port number"
				}
				hasPort = true
			}
		}
	}
	if strings.HasPrefix(check, ":") {
		check = "0" + check
	}
	if strings.HasSuffix(check, ":") {
		check += "0"
	}
	if strings.Contains(check, "::") {
		n := strings.Count(check, ":")
		check = strings.Replace(check, "::", ":"+strings.Repeat("0:", max(8-n, 0)), 1)
	}
	if !ipv6.MatchString(check) {
		return false, "invalid ipv6 address: " + address
	}
	return hasPort, ""
}

func checkHostname(address string) (bool, string) {
	name, hasPort := address, false
	if i := strings.LastIndexByte(address, ':'); i >= 0 && i+1 < len(address) && strings.Trim(address[i+1:], "0123456789") == "" {
		name, hasPort = address[:i], true
		if n, err := strconv.Atoi(address[i+1:]); err != nil || n > 65535 {
			return true, "invalid port number"
		}
	}
	if !hostRE.MatchString(name) {
		return hasPort, "invalid hostname: " + address
	}
	segments := strings.Split(name, ".")
	for i, s := range segments {
		if strings.HasSuffix(s, "-") || (s == "" && i != len(segments)-1) {
			return hasPort, "invalid hostname: " + address
		}
	}
	return hasPort, ""
}

// validateHost is typedefs.host.
func validateHost(host string) string {
	_, hasPort, msg := normalizeIP(host)
	if msg != "" && msg != "invalid port number" {
		return "invalid value: " + host
	}
	if msg == "invalid port number" || hasPort {
		return "must not have a port"
	}
	return ""
}

// validateSNI is typedefs.sni.
func validateSNI(host string) string {
	typ, hasPort, msg := normalizeIP(host)
	if msg != "" && msg != "invalid port number" {
		return "invalid value: " + host
	}
	if typ != "name" {
		return "must not be an IP"
	}
	if msg == "invalid port number" || hasPort {
		return "must not have a port"
	}
	return ""
}

// validateDomain is the element validator of typedefs.hosts: at most one
// wildcard, as the leftmost or rightmost label, then a host with an
// optional port once each * is replaced by "abc".
func validateDomain(host string) string {
	if strings.Count(host, "*") > 1 {
		return "invalid wildcard: must have at most one wildcard"
	}
	if strings.Contains(host, "*") && !strings.HasPrefix(host, "*.") && !strings.HasSuffix(host, ".*") {
		return "invalid wildcard: must be placed at leftmost or rightmost label"
	}
	_, _, msg := normalizeIP(strings.ReplaceAll(host, "*", "abc"))
	return msg
}

// validateURL is typedefs.url (LuaSocket's url.parse, approximated with
// net/url).
func validateURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if ue, ok := err.(*url.Error); ok {
			err = ue.Err
		}
		return "could not parse url. " + err.Error()
	}
	if u.Host == "" {
		return "missing host in url"
	}
	if u.Scheme == "" {
		return "missing scheme in url"
	}
	return ""
}

// validateEmail is account_email's match = "%w*%p*@+%w*%.?%w*", a Lua
// pattern without anchors: in effect, the value must contain an @.
func validateEmail(s string) string {
	if !strings.Contains(s, "@") {
		return "invalid value: " + s
	}
	return ""
}

// reservedWords are the Redis key prefixes Kong's namespace must not
// start with (kong/plugins/acme/reserved_words.lua).
var reservedWords = []string{"kong_acme:cert_key:", "kong_acme:renew_config:", "kong_acme:renew_last_run"}

func validateNamespace(ns string) string {
	for _, w := range reservedWords {
		if strings.HasPrefix(ns, w) {
			return "namespace can't be prefixed with reserved word: " + w
		}
	}
	return ""
}

// The acme plugin's schema.

func portField(name string) *field {
	return &field{name: name, typ: tInteger, between: &[2]float64{0, 65535}}
}

func timeoutField(name string) *field {
	return &field{name: name, typ: tInteger, between: &[2]float64{0, math.Pow(2, 31) - 2}}
}

func hostField(name string) *field { return &field{name: name, typ: tString, check: validateHost} }
func strField(name string) *field  { return &field{name: name, typ: tString} }
func numField(name string) *field  { return &field{name: name, typ: tNumber} }
func boolField(name string) *field { return &field{name: name, typ: tBoolean} }

// ref marks a field referenceable, secret a credential (referenceable too).
func ref(f *field) *field    { f.referenceable = true; return f }
func secret(f *field) *field { f.secret, f.referenceable = true, true; return f }

// secretOrEmpty is a credential that may be "" (len_min = 0).
func secretOrEmpty(name string) *field {
	f := secret(strField(name))
	f.emptyOK = true
	return f
}

// redisFields are Kong's shared Redis schema (kong/tools/redis/schema.lua),
// the fields Kong Enterprise adds to it (Cluster, Sentinel, cloud
// authentication, split timeouts, pooling), the acme plugin's
// extra_options, and the deprecated shorthand fields.
var redisFields = []*field{
	ref(hostField("host")),
	ref(portField("port")),
	timeoutField("timeout"),
	ref(strField("username")),
	secretOrEmpty("password"),
	{name: "database", typ: tInteger},
	boolField("ssl"),
	boolField("ssl_verify"),
	ref(&field{name: "server_name", typ: tString, check: validateSNI}),
	{name: "extra_options", typ: tRecord, fields: []*field{
		{name: "namespace", typ: tString, emptyOK: true, check: validateNamespace},
		numField("scan_count"),
	}},
	// Kong Enterprise
	{name: "cluster_nodes", typ: tArray, elem: &field{typ: tRecord, fields: []*field{hostField("ip"), portField("port")}}},
	{name: "cluster_max_redirections", typ: tInteger},
	strField("sentinel_master"),
	{name: "sentinel_role", typ: tString, oneOf: []string{"master", "slave", "any"}},
	{name: "sentinel_nodes", typ: tArray, elem: &field{typ: tRecord, fields: []*field{hostField("host"), portField("port")}}},
	ref(strField("sentinel_username")),
	secretOrEmpty("sentinel_password"),
	timeoutField("connect_timeout"),
	timeoutField("send_timeout"),
	timeoutField("read_timeout"),
	{name: "keepalive_pool_size", typ: tInteger, between: &[2]float64{1, math.Pow(2, 31) - 2}},
	{name: "keepalive_backlog", typ: tInteger, between: &[2]float64{0, math.Pow(2, 31) - 2}},
	boolField("connection_is_proxied"),
	{name: "redis_proxy_type", typ: tString, oneOf: []string{"envoy_v1.31"}},
	{name: "cloud_authentication", typ: tAny},
	// deprecated shorthands (translated to the fields above)
	secretOrEmpty("auth"),
	{name: "ssl_server_name", typ: tString},
	{name: "namespace", typ: tString, emptyOK: true},
	{name: "scan_count", typ: tInteger},
}

var acmeConfig = &field{name: "config", typ: tRecord, required: true, fields: []*field{
	{name: "account_email", typ: tString, required: true, check: validateEmail, referenceable: true},
	{name: "account_key", typ: tRecord, fields: []*field{
		{name: "key_id", typ: tString, required: true},
		strField("key_set"),
	}},
	{name: "api_uri", typ: tString, check: validateURL},
	boolField("tos_accepted"),
	secret(strField("eab_kid")),
	secret(strField("eab_hmac_key")),
	{name: "cert_type", typ: tString, oneOf: []string{"rsa", "ecc"}},
	{name: "rsa_key_size", typ: tNumber, oneOfNum: []float64{2048, 3072, 4096}},
	numField("renew_threshold_days"),
	{name: "domains", typ: tArray, elem: &field{typ: tString, check: validateDomain}},
	boolField("allow_any_domain"),
	numField("fail_backoff_minutes"),
	{name: "storage", typ: tString, oneOf: []string{"kong", "shm", "redis", "consul", "vault"}},
	{name: "storage_config", typ: tRecord, fields: []*field{
		{name: "shm", typ: tRecord, fields: []*field{strField("shm_name")}},
		{name: "kong", typ: tAny},
		{name: "redis", typ: tRecord, fields: redisFields},
		{name: "consul", typ: tRecord, fields: []*field{
			boolField("https"), hostField("host"), portField("port"), strField("kv_path"), numField("timeout"), secret(strField("token")),
		}},
		{name: "vault", typ: tRecord, fields: []*field{
			boolField("https"), hostField("host"), portField("port"), strField("kv_path"), numField("timeout"), secret(strField("token")),
			boolField("tls_verify"), strField("tls_server_name"),
			{name: "auth_method", typ: tString, oneOf: []string{"token", "kubernetes"}},
			strField("auth_path"), strField("auth_role"), strField("jwt_path"),
		}},
	}},
	strField("preferred_chain"),
	boolField("enable_ipv4_common_name"),
}}

// pluginFields are the fields of a plugin entity, as Kong's Admin API and
// decK write them.
var pluginFields = []*field{
	strField("id"),
	strField("name"),
	strField("instance_name"),
	{name: "created_at", typ: tInteger},
	{name: "updated_at", typ: tInteger},
	boolField("enabled"),
	{name: "tags", typ: tSet, elem: &field{typ: tString}},
	{name: "protocols", typ: tSet, elem: &field{typ: tString, oneOf: []string{"grpc", "grpcs", "http", "https"}}},
	{name: "consumer", typ: tForeign},
	{name: "service", typ: tForeign},
	{name: "route", typ: tForeign},
	{name: "consumer_group", typ: tForeign},
	{name: "ordering", typ: tAny},
	{name: "partials", typ: tAny},
	{name: "_config", typ: tAny},
	{name: "ws_id", typ: tAny},
	acmeConfig,
}
