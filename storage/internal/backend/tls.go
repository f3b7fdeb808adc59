package backend

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/acmekit/caddy-acme/internal/placeholder"
)

// TLS configures a storage module's TLS connection to its server (the tls
// field of acme_redis, acme_consul and acme_vault). In the Caddyfile:
//
//	tls {
//		enabled <true|false>
//		ca_file <path>
//		server_name <name>
//		insecure_skip_verify
//		cert_file <path>
//		key_file <path>
//	}
//
// A tls object (in the Caddyfile a tls subdirective, with or without a
// block) turns TLS on unless enabled is false; a disabled tls object is
// as if there were none. ca_file, server_name, cert_file and key_file
// accept placeholders such as {env.NAME}; an unknown or empty placeholder
// is an error.
type TLS struct {
	// Whether to use TLS. Set it to false to turn TLS off while keeping the
	// other settings. Default: true (the presence of the tls object turns
	// TLS on).
	Enabled *bool `json:"enabled,omitempty"`

	// A PEM file of the CA certificates the server's certificate must
	// chain to. Default: the system's trusted roots.
	CAFile string `json:"ca_file,omitempty"`

	// The name the server's certificate must be valid for, also sent as
	// SNI. Default: the host of the address connected to.
	ServerName string `json:"server_name,omitempty"`

	// Accept any certificate the server presents, without verifying it.
	// Insecure: for tests only. Default: false.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`

	// A PEM client certificate to present, for servers that require one
	// (mutual TLS). Needs key_file. Default: none.
	CertFile string `json:"cert_file,omitempty"`

	// The PEM private key of cert_file. Needs cert_file. Default: none.
	KeyFile string `json:"key_file,omitempty"`
}

// On reports whether t turns TLS on: t is not nil and enabled is not false.
func (t *TLS) On() bool {
	return t != nil && (t.Enabled == nil || *t.Enabled)
}

// UnmarshalCaddyfile reads a tls subdirective with the dispenser at its
// `tls` token: no arguments, then an optional block with the
// subdirectives in TLS's documentation, each with exactly the arguments
// shown and at most once. It parses only: ClientConfig checks the values.
func (t *TLS) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(Seen)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := seen.Once(d); err != nil {
			return err
		}
		var err error
		switch key := d.Val(); key {
		case "insecure_skip_verify":
			if d.NextArg() {
				return d.ArgErr()
			}
			t.InsecureSkipVerify = true
		case "enabled":
			v, err := OneArg(d)
			if err != nil {
				return err
			}
			b, err := strconv.ParseBool(v)
			if err != nil {
				return d.Errf("tls: enabled: expected true or false, got %q", v)
			}
			t.Enabled = &b
		case "ca_file":
			t.CAFile, err = OneArg(d)
		case "server_name":
			t.ServerName, err = OneArg(d)
		case "cert_file":
			t.CertFile, err = OneArg(d)
		case "key_file":
			t.KeyFile, err = OneArg(d)
		default:
			return d.Errf("unrecognized subdirective '%s'", key)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// ClientConfig checks t and builds the client TLS configuration from it:
// placeholders expanded, ca_file and the cert_file/key_file pair read and
// parsed. It returns nil if t does not turn TLS on (see On). Errors name
// the field (tls.ca_file, …).
//
// The fingerprint identifies the configuration for a client pool: it is a
// hash of the settings and of the files' contents (so a rotated
// certificate gives a new fingerprint), and holds no key material.
func (t *TLS) ClientConfig() (cfg *tls.Config, fingerprint string, err error) {
	if !t.On() {
		return nil, "", nil
	}
	var caFile, serverName, certFile, keyFile string
	for _, f := range []struct {
		name string
		in   string
		out  *string
	}{
		{"ca_file", t.CAFile, &caFile},
		{"server_name", t.ServerName, &serverName},
		{"cert_file", t.CertFile, &certFile},
		{"key_file", t.KeyFile, &keyFile},
	} {
		if *f.out, err = placeholder.Expand("tls."+f.name, f.in); err != nil {
			return nil, "", err
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, "", errors.New("tls.cert_file, tls.key_file: set both or neither")
	}

	cfg = &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         serverName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // opt-in, documented as insecure
	}
	h := sha256.New()
	add := func(s string) { fmt.Fprintf(h, "%d:%s;", len(s), s) }
	add(serverName)
	add(strconv.FormatBool(t.InsecureSkipVerify))
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, "", fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("tls.ca_file: no PEM certificate in %s", caFile)
		}
		cfg.RootCAs = pool
		add(string(pem))
	} else {
		add("")
	}
	if certFile != "" {
		certPEM, err := os.ReadFile(certFile)
		if err != nil {
			return nil, "", fmt.Errorf("tls.cert_file: %w", err)
		}
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, "", fmt.Errorf("tls.key_file: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, "", fmt.Errorf("tls.cert_file, tls.key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
		add(string(certPEM))
		add(string(keyPEM))
	}
	return cfg, hex.EncodeToString(h.Sum(nil)), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*TLS)(nil)
