package kongcompat_test

import (
	"strings"
	"testing"
)

// deck wraps an acme plugin config (YAML, indented by two spaces in the
// test table) into a declarative file; the plugin starts on line 3.
func deck(config string) []byte {
	var b strings.Builder
	b.WriteString("_format_version: \"3.0\"\nplugins:\n- name: acme\n  config:\n")
	for _, line := range strings.Split(strings.Trim(config, "\n"), "\n") {
		b.WriteString("    " + line + "\n")
	}
	return []byte(b.String())
}

// TestKongSchemaMessages holds the cases of Kong's acme schema (its spec
// 04-schema_spec.lua, the typedefs it uses and its entity checks): what
// Kong rejects is rejected with Kong's message, in Kong's format
// (schema_violation: entity errors first, then fields by path).
func TestKongSchemaMessages(t *testing.T) {
	const at = "kong.yml:3: acme plugin (plugins[0]): "
	for _, tc := range []struct {
		name, config, want string
	}{
		{"valid config", "account_email: example@example.com\napi_uri: https://api.acme.org", ""},
		{
			"invalid email", "account_email: notaemail\napi_uri: https://api.acme.org",
			"schema violation (config.account_email: invalid value: notaemail)",
		},
		{
			"email missing", "api_uri: https://api.acme.org",
			"schema violation (config.account_email: required field missing)",
		},
		{
			"email null", "account_email: null",
			"schema violation (config.account_email: required field missing)",
		},
		{
			"email empty", `account_email: ""`,
			"schema violation (config.account_email: length must be at least 1)",
		},
		{
			"email not a string", "account_email: [a@b]",
			"schema violation (config.account_email: expected a string)",
		},
		{
			"ToS staging origin", "account_email: example@example.com\napi_uri: https://acme-staging-v02.api.letsencrypt.org",
			"2 schema violations (terms of service must be accepted, see https://letsencrypt.org/repository/; config.tos_accepted: value must be true)",
		},
		{
			"ToS production origin", "account_email: example@example.com\napi_uri: https://acme-v02.api.letsencrypt.org\ntos_accepted: false",
			"2 schema violations (terms of service must be accepted, see https://letsencrypt.org/repository/; config.tos_accepted: value must be true)",
		},
		{"ToS accepted", "account_email: example@example.com\napi_uri: https://acme-v02.api.letsencrypt.org\ntos_accepted: true", ""},
		{"account_key with key_set", "account_email: example@example.com\napi_uri: https://api.acme.org\naccount_key: {key_id: \"123\", key_set: my-key-set}", ""},
		{
			"account_key without key_id", "account_email: example@example.com\naccount_key: {key_set: my-key-set}",
			"schema violation (config.account_key.key_id: required field missing)",
		},
		{
			"wildcard in the middle", "account_email: a@example.com\ndomains: [ok.example.com, a.*.example.com]",
			"schema violation (config.domains: invalid wildcard: must be placed at leftmost or rightmost label)",
		},
		{
			"two wildcards", "account_email: a@example.com\ndomains: ['*.example.*']",
			"schema violation (config.domains: invalid wildcard: must have at most one wildcard)",
		},
		{
			"wildcard inside a label", "account_email: a@example.com\ndomains: ['ab*.example.com']",
			"schema violation (config.domains: invalid wildcard: must be placed at leftmost or rightmost label)",
		},
		{
			"bare wildcard", "account_email: a@example.com\ndomains: ['*']",
			"schema violation (config.domains: invalid wildcard: must be placed at leftmost or rightmost label)",
		},
		{
			"invalid hostname", "account_email: a@example.com\ndomains: ['exa mple.com']",
			"schema violation (config.domains: invalid hostname: exa mple.com)",
		},
		{
			"invalid hostname after wildcard", "account_email: a@example.com\ndomains: ['*.exa mple.com']",
			"schema violation (config.domains: invalid hostname: abc.exa mple.com)",
		},
		{
			"invalid ipv4", "account_email: a@example.com\ndomains: ['300.1.1.1']",
			"schema violation (config.domains: invalid ipv4 address: 300.1.1.1)",
		},
		{
			"domains not an array", "account_email: a@example.com\ndomains: example.com",
			"schema violation (config.domains: expected an array)",
		},
		{
			"unknown storage", "account_email: a@example.com\nstorage: s3",
			"schema violation (config.storage: expected one of: kong, shm, redis, consul, vault)",
		},
		{
			"cert_type", "account_email: a@example.com\ncert_type: dsa",
			"schema violation (config.cert_type: expected one of: rsa, ecc)",
		},
		{
			"rsa_key_size", "account_email: a@example.com\nrsa_key_size: 1024",
			"schema violation (config.rsa_key_size: expected one of: 2048, 3072, 4096)",
		},
		{
			"renew_threshold_days a string", "account_email: a@example.com\nrenew_threshold_days: soon",
			"schema violation (config.renew_threshold_days: expected a number)",
		},
		{
			"tos_accepted a string", "account_email: a@example.com\ntos_accepted: \"yes\"",
			"schema violation (config.tos_accepted: expected a boolean)",
		},
		{
			"api_uri without scheme", "account_email: a@example.com\napi_uri: acme.example.com/directory",
			"schema violation (config.api_uri: missing host in url)",
		},
		{
			"unknown field", "account_email: a@example.com\nrenew_days: 3",
			"schema violation (config.renew_days: unknown field)",
		},
		{
			"redis host missing", "account_email: a@example.com\nstorage: redis",
			"2 schema violations (failed conditional validation given value of field 'config.storage'; config.storage_config.redis.host: required field missing)",
		},
		{
			"redis host with a port", "account_email: a@example.com\nstorage: redis\nstorage_config:\n  redis: {host: 'redis:6379'}",
			"schema violation (config.storage_config.redis.host: must not have a port)",
		},
		{
			"redis port out of range", "account_email: a@example.com\nstorage: redis\nstorage_config:\n  redis: {host: redis, port: 70000}",
			"schema violation (config.storage_config.redis.port: value should be between 0 and 65535)",
		},
		{
			"redis port not an integer", "account_email: a@example.com\nstorage: redis\nstorage_config:\n  redis: {host: redis, port: 63.79}",
			"schema violation (config.storage_config.redis.port: expected an integer)",
		},
		{
			"redis server_name an IP", "account_email: a@example.com\nstorage: redis\nstorage_config:\n  redis: {host: redis, server_name: 10.0.0.1}",
			"schema violation (config.storage_config.redis.server_name: must not be an IP)",
		},
		{
			"redis namespace reserved", "account_email: a@example.com\nstorage: redis\nstorage_config:\n  redis: {host: redis, extra_options: {namespace: 'kong_acme:renew_config:x'}}",
			"schema violation (config.storage_config.redis.extra_options.namespace: namespace can't be prefixed with reserved word: kong_acme:renew_config:)",
		},
		{
			"redis sentinel_role", "account_email: a@example.com\nstorage_config:\n  redis: {sentinel_role: replica}",
			"schema violation (config.storage_config.redis.sentinel_role: expected one of: master, slave, any)",
		},
		{
			"redis deprecated and new values differ", "account_email: a@example.com\nstorage: redis\nstorage_config:\n  redis: {host: redis, ssl_server_name: a.example.com, server_name: b.example.com}",
			"schema violation (config.storage_config.redis.ssl_server_name: both deprecated and new field are used but their values mismatch: ssl_server_name = a.example.com vs server_name = b.example.com)",
		},
		{"redis deprecated and new values agree", "account_email: a@example.com\nstorage: redis\nstorage_config:\n  redis: {host: redis, scan_count: 10, extra_options: {scan_count: 10}}", ""},
		{
			"redis cluster_nodes empty", "account_email: a@example.com\nstorage: redis\nstorage_config:\n  redis: {cluster_nodes: []}",
			"2 schema violations (failed conditional validation given value of field 'config.storage'; config.storage_config.redis.host: required field missing)",
		},
		{
			"redis cluster node ip", "account_email: a@example.com\nstorage: redis\nstorage_config:\n  redis: {cluster_nodes: [{ip: 'a b'}]}",
			"schema violation (config.storage_config.redis.cluster_nodes.ip: invalid value: a b)",
		},
		{
			"vault auth_method", "account_email: a@example.com\nstorage_config:\n  vault: {auth_method: approle}",
			"schema violation (config.storage_config.vault.auth_method: expected one of: token, kubernetes)",
		},
		{
			"consul host", "account_email: a@example.com\nstorage_config:\n  consul: {host: 'consul host'}",
			"schema violation (config.storage_config.consul.host: invalid value: consul host)",
		},
		{
			"storage_config not a record", "account_email: a@example.com\nstorage_config: redis",
			"schema violation (config.storage_config: expected a record)",
		},
		{
			"several errors", "account_email: notaemail\ncert_type: dsa",
			"2 schema violations (config.account_email: invalid value: notaemail; config.cert_type: expected one of: rsa, ecc)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := mapEnv(nil).Adapt(deck(tc.config), map[string]any{"filename": "kong.yml"})
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted, want %s", tc.want)
			case tc.want != "" && err.Error() != at+tc.want:
				t.Fatalf("error:\n got %s\nwant %s", err, at+tc.want)
			}
		})
	}
}

// TestPluginEntity covers the plugin entity around its config: Kong's
// global-only rule and the other plugin fields.
func TestPluginEntity(t *testing.T) {
	for _, tc := range []struct {
		name, input, want string
	}{
		{
			"global plugin naming a service", "_format_version: \"3.0\"\nplugins:\n- name: acme\n  service: api\n  config: {account_email: a@example.com}\n",
			"kong.yml:3: acme plugin (plugins[0]): schema violation (service: value must be null)",
		},
		{
			"nested under a consumer", "_format_version: \"3.0\"\nconsumers:\n- username: bob\n  plugins:\n  - name: acme\n    config: {account_email: a@example.com}\n",
			"kong.yml:5: acme plugin (consumers[0].plugins[0]): schema violation (consumer: value must be null)",
		},
		{
			"config missing", "_format_version: \"3.0\"\nplugins:\n- name: acme\n",
			"kong.yml:3: acme plugin (plugins[0]): schema violation (config: required field missing)",
		},
		{
			"protocols", "_format_version: \"3.0\"\nplugins:\n- name: acme\n  protocols: [tcp]\n  config: {account_email: a@example.com}\n",
			"kong.yml:3: acme plugin (plugins[0]): schema violation (protocols: expected one of: grpc, grpcs, http, https)",
		},
		{
			"unknown plugin field", "_format_version: \"3.0\"\nplugins:\n- name: acme\n  run_on: first\n  config: {account_email: a@example.com}\n",
			"kong.yml:3: acme plugin (plugins[0]): schema violation (run_on: unknown field)",
		},
		{
			"format version", "_format_version: \"4.0\"\nplugins: []\n",
			"kong.yml:1: declarative config is invalid: _format_version: expected one of: 1.1, 2.1, 3.0",
		},
		{"a list", "- name: acme\n", "kong.yml:1: expected a Kong declarative file or an acme plugin object, got an array"},
		{"two YAML documents", "name: acme\n---\nname: acme\n", "kong.yml: line 2: a second YAML document: give one Kong configuration per file"},
		{"broken JSON", "{\"name\": \"acme\",\n \"config\": {\"account_email\": }\n}", "kong.yml: parsing JSON: line 2: invalid character '}' looking for beginning of value"},
		{"duplicate key", "_format_version: \"3.0\"\n_format_version: \"3.0\"\n", "kong.yml: line 2: key \"_format_version\" appears twice"},
		{"empty", "  \n", "kong.yml: empty input: expected a Kong declarative file or an acme plugin object"},
		{
			"redis cluster and sentinel", string(deck("account_email: a@b\nstorage: redis\nstorage_config:\n  redis:\n    cluster_nodes: [{ip: 10.0.0.1}]\n    sentinel_master: m\n    sentinel_nodes: [{host: s}]")),
			"kong.yml:9: acme plugin (plugins[0]): schema violation (config.storage_config.redis: only one or none of these fields must be set: 'cluster_nodes', 'sentinel_nodes')",
		},
		{
			"redis sentinel without master", string(deck("account_email: a@b\nstorage: redis\nstorage_config:\n  redis:\n    sentinel_nodes: [{host: s}]")),
			"kong.yml:9: acme plugin (plugins[0]): schema violation (config.storage_config.redis: all or none of these fields must be set: 'sentinel_master', 'sentinel_nodes')",
		},
		{
			"vault kubernetes without role", string(deck("account_email: a@b\nstorage: vault\nstorage_config:\n  vault: {auth_method: kubernetes}")),
			"kong.yml:8: acme plugin (plugins[0]): config.storage_config.vault.auth_role: required with auth_method kubernetes (the Vault role to log in as)",
		},
		{
			"vault token missing", string(deck("account_email: a@b\nstorage: vault\nstorage_config:\n  vault: {host: v}")),
			"kong.yml:8: acme plugin (plugins[0]): config.storage_config.vault.token: required with auth_method token",
		},
		{
			"negative renew threshold", string(deck("account_email: a@b\nrenew_threshold_days: -1")),
			"kong.yml:6: acme plugin (plugins[0]): config.renew_threshold_days: must not be negative, got -1",
		},
		{
			"negative fail backoff", string(deck("account_email: a@b\nfail_backoff_minutes: -5")),
			"kong.yml:6: acme plugin (plugins[0]): config.fail_backoff_minutes: must not be negative (0 disables the backoff), got -5",
		},
		{
			"renew threshold beyond the app's limit", string(deck("account_email: a@b\nrenew_threshold_days: 1e10")),
			"kong.yml:6: acme plugin (plugins[0]): config.renew_threshold_days: must be at most 3650 (10 years), got 1e+10",
		},
		{
			// the message of the app (appconfig), for JSON and the Caddyfile alike
			"renew threshold 1e9", string(deck("account_email: a@b\nrenew_threshold_days: 1e9")),
			"kong.yml:6: acme plugin (plugins[0]): config.renew_threshold_days: must be at most 3650 (10 years), got 1e+09",
		},
		{
			"fail backoff beyond the app's limit", string(deck("account_email: a@b\nfail_backoff_minutes: 1e9")),
			"kong.yml:6: acme plugin (plugins[0]): config.fail_backoff_minutes: must be at most 525600 (a year), got 1e+09",
		},
		{
			"decK template of another variable", string(deck("account_email: '${{ env \"HOME\" }}'")),
			"kong.yml:3: acme plugin (plugins[0]): config.account_email: decK template reads environment variable \"HOME\": decK reads only variables whose names start with DECK_",
		},
		{
			"partials", "_format_version: \"3.0\"\nplugins:\n- name: acme\n  partials: [{id: p}]\n  config: {account_email: a@b}\n",
			"kong.yml:4: acme plugin (plugins[0]): partials: Kong partials are not supported: write the Redis settings into storage_config.redis",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := mapEnv(nil).Adapt([]byte(tc.input), map[string]any{"filename": "kong.yml"})
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error:\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}
