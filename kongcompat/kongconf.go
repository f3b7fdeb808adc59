package kongcompat

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// kongConf holds the kong.conf properties the adapter reads, after
// Kong's KONG_<NAME> environment overrides: the deployment mode (database,
// role), the PostgreSQL connection of `kong` storage (pg_*) and the CA
// file Kong verifies TLS peers with (lua_ssl_trusted_certificate).
//
// kong.conf is read only when given (the kong_conf adapter option, else
// the KONG_CONF environment variable); Kong's own search path
// (/etc/kong/kong.conf, …) is never read. The KONG_* variables apply
// with or without a file, as they do for Kong.
type kongConf struct {
	file   string // the kong.conf path, "" if none was given
	values map[string]confValue
}

type confValue struct {
	val  string
	env  string // the KONG_* variable the value came from, if any
	line int    // its line in kong.conf, if it came from there
}

// kongConfKeys are the properties read.
var kongConfKeys = []string{
	"database", "role",
	"pg_host", "pg_port", "pg_user", "pg_password", "pg_database", "pg_schema",
	"pg_ssl", "pg_ssl_verify", "pg_ssl_cert", "pg_ssl_cert_key", "pg_timeout",
	"lua_ssl_trusted_certificate",
}

// loadKongConf reads file (if not "") and the environment overrides.
func loadKongConf(file string, lookupEnv func(string) (string, bool)) (*kongConf, error) {
	kc := &kongConf{file: file, values: make(map[string]confValue)}
	if file != "" {
		data, err := readFileLimited(file, MaxKongConfSize, "kong.conf")
		if err != nil {
			if isTooLarge(err) {
				return nil, err
			}
			return nil, fmt.Errorf("reading kong.conf: %w", err)
		}
		if err := kc.parse(data); err != nil {
			return nil, err
		}
	}
	for _, key := range kongConfKeys {
		name := "KONG_" + strings.ToUpper(key)
		if v, ok := lookupEnv(name); ok {
			kc.values[key] = confValue{val: strings.TrimSpace(v), env: name}
		}
	}
	// the official Docker image reads KONG_PG_PASSWORD_FILE
	if _, ok := kc.values["pg_password"]; !ok || kc.values["pg_password"].env == "" {
		if path, ok := lookupEnv("KONG_PG_PASSWORD_FILE"); ok && path != "" {
			kc.values["pg_password"] = confValue{val: path, env: "KONG_PG_PASSWORD_FILE"}
		}
	}
	return kc, nil
}

// parse reads kong.conf's `name = value` lines. As in Kong, # starts a
// comment unless written \#, and values are trimmed.
func (kc *kongConf) parse(data []byte) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := stripComment(sc.Text())
		if strings.TrimSpace(line) == "" {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" {
			return fmt.Errorf("%s:%d: expected name = value", kc.file, n)
		}
		kc.values[strings.ToLower(key)] = confValue{val: strings.TrimSpace(val), line: n}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", kc.file, err)
	}
	return nil
}

func stripComment(line string) string {
	var b strings.Builder
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line) && line[i+1] == '#':
			b.WriteByte('#')
			i++
		case line[i] == '#':
			return b.String()
		default:
			b.WriteByte(line[i])
		}
	}
	return b.String()
}

// get returns a property and whether it was set (in the file or the
// environment).
func (kc *kongConf) get(key string) (confValue, bool) {
	if kc == nil {
		return confValue{}, false
	}
	v, ok := kc.values[key]
	return v, ok
}

// where names the origin of a value for messages.
func (kc *kongConf) where(key string) string {
	v, _ := kc.get(key)
	switch {
	case v.env != "":
		return v.env
	case v.line > 0:
		return fmt.Sprintf("%s:%d: %s", kc.file, v.line, key)
	}
	return key
}

// mode returns Kong's database and role settings, and whether database
// was set at all.
func (kc *kongConf) mode() (database, role string, databaseSet bool, err error) {
	database, role = "postgres", "traditional"
	if v, ok := kc.get("database"); ok {
		database, databaseSet = strings.ToLower(v.val), true
		switch database {
		case "postgres", "off":
		default:
			return "", "", false, fmt.Errorf("%s has an invalid value: '%s' (postgres, off)", kc.where("database"), v.val)
		}
	} else if kc.file != "" {
		databaseSet = true // kong.conf without database: Kong's default, postgres
	}
	if v, ok := kc.get("role"); ok {
		role = strings.ToLower(v.val)
		switch role {
		case "traditional", "control_plane", "data_plane":
		default:
			return "", "", false, fmt.Errorf("%s has an invalid value: '%s' (traditional, data_plane, control_plane)", kc.where("role"), v.val)
		}
	}
	return database, role, databaseSet, nil
}

// boolean reads an on/off property.
func (kc *kongConf) boolean(key string) (val, set bool, err error) {
	v, ok := kc.get(key)
	if !ok {
		return false, false, nil
	}
	switch strings.ToLower(v.val) {
	case "on", "true":
		return true, true, nil
	case "off", "false":
		return false, true, nil
	}
	return false, false, fmt.Errorf("%s is not a boolean: '%s' (on, off)", kc.where(key), v.val)
}

// integer reads a numeric property.
func (kc *kongConf) integer(key string, min, max int) (int, bool, error) {
	v, ok := kc.get(key)
	if !ok {
		return 0, false, nil
	}
	n, err := strconv.Atoi(v.val)
	if err != nil || n < min || n > max {
		return 0, false, fmt.Errorf("%s is not a valid number: '%s' (%d to %d)", kc.where(key), v.val, min, max)
	}
	return n, true, nil
}

// caCertFiles returns the files of lua_ssl_trusted_certificate (without
// Kong's "system" keyword).
func (kc *kongConf) caCertFiles() []string {
	v, ok := kc.get("lua_ssl_trusted_certificate")
	if !ok {
		return nil
	}
	var files []string
	for f := range strings.SplitSeq(v.val, ",") {
		if f = strings.TrimSpace(f); f != "" && f != "system" {
			files = append(files, f)
		}
	}
	return files
}
