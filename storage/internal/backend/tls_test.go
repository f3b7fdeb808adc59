package backend

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestTLSCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  string // JSON, if no error
		err   string // substring of the error
	}{
		{name: "bare", input: "tls", want: `{}`},
		{name: "empty block", input: "tls {\n}", want: `{}`},
		{
			name: "everything",
			input: `tls {
				enabled true
				ca_file /etc/ca.pem
				server_name db.internal
				insecure_skip_verify
				cert_file /etc/client.pem
				key_file {env.KEY_FILE}
			}`,
			want: `{"enabled":true,"ca_file":"/etc/ca.pem","server_name":"db.internal","insecure_skip_verify":true,` +
				`"cert_file":"/etc/client.pem","key_file":"{env.KEY_FILE}"}`,
		},
		{name: "disabled", input: "tls {\n enabled false\n}", want: `{"enabled":false}`},
		{name: "argument", input: "tls on", err: "wrong argument count"},
		{name: "argument and block", input: "tls on {\n ca_file a\n}", err: "wrong argument count"},
		{name: "unknown", input: "tls {\n verify no\n}", err: "unrecognized subdirective 'verify'"},
		{name: "client_cert_file is gone", input: "tls {\n client_cert_file a\n}", err: "unrecognized subdirective 'client_cert_file'"},
		{name: "duplicate", input: "tls {\n ca_file a\n ca_file b\n}", err: "duplicate subdirective 'ca_file'"},
		{name: "duplicate flag", input: "tls {\n insecure_skip_verify\n insecure_skip_verify\n}", err: "duplicate subdirective 'insecure_skip_verify'"},
		{name: "flag with argument", input: "tls {\n insecure_skip_verify yes\n}", err: "wrong argument count"},
		{name: "missing argument", input: "tls {\n server_name\n}", err: "wrong argument count"},
		{name: "extra argument", input: "tls {\n cert_file a b\n}", err: "wrong argument count"},
		{name: "missing enabled", input: "tls {\n enabled\n}", err: "wrong argument count"},
		{name: "bad enabled", input: "tls {\n enabled maybe\n}", err: `tls: enabled: expected true or false, got "maybe"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(tc.input)
			d.Next()
			var got TLS
			err := got.UnmarshalCaddyfile(d)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(got)
			if string(b) != tc.want {
				t.Fatalf("got %s\nwant %s", b, tc.want)
			}
		})
	}

	// Inside a module's block, the tls block ends where it should.
	d := caddyfile.NewTestDispenser("mod {\n tls {\n ca_file a\n }\n after x\n}")
	d.Next()
	if !d.NextBlock(0) || d.Val() != "tls" {
		t.Fatal("no tls subdirective")
	}
	var got TLS
	if err := got.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if !d.NextBlock(0) || d.Val() != "after" || got.CAFile != "a" {
		t.Fatalf("after the tls block: %q, CAFile %q", d.Val(), got.CAFile)
	}
}

func TestTLSOn(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		t    *TLS
		want bool
	}{
		{nil, false},
		{&TLS{}, true},
		{&TLS{Enabled: &yes}, true},
		{&TLS{Enabled: &no, CAFile: "x"}, false},
	} {
		if got := tc.t.On(); got != tc.want {
			t.Errorf("%+v.On() = %v, want %v", tc.t, got, tc.want)
		}
	}
}

func TestTLSClientConfig(t *testing.T) {
	dir := t.TempDir()
	caFile := writeTestCert(t, dir, "ca")
	certFile, keyFile := writeTestCert(t, dir, "client"), filepath.Join(dir, "client.key")
	otherCA := writeTestCert(t, dir, "other")
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	no := false
	for _, tt := range []*TLS{nil, {Enabled: &no, CAFile: missing}} {
		cfg, fp, err := tt.ClientConfig()
		if cfg != nil || fp != "" || err != nil {
			t.Fatalf("ClientConfig of %+v = %v, %q, %v; want nothing", tt, cfg, fp, err)
		}
	}

	cfg, defaultFP, err := (&TLS{}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.RootCAs != nil || cfg.ServerName != "" || cfg.InsecureSkipVerify || len(cfg.Certificates) != 0 {
		t.Fatalf("defaults: %+v", cfg)
	}

	t.Setenv("CADDY_ACME_TEST_TLS_KEY_FILE", keyFile)
	full := &TLS{
		CAFile: caFile, ServerName: "db.internal", InsecureSkipVerify: true,
		CertFile: certFile, KeyFile: "{env.CADDY_ACME_TEST_TLS_KEY_FILE}",
	}
	cfg, fullFP, err := full.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RootCAs == nil || cfg.ServerName != "db.internal" || !cfg.InsecureSkipVerify || len(cfg.Certificates) != 1 {
		t.Fatalf("full: %+v", cfg)
	}
	keyPEM, _ := os.ReadFile(keyFile)
	if strings.Contains(fullFP, string(keyPEM)) || len(fullFP) != 64 {
		t.Fatalf("fingerprint %q", fullFP)
	}

	// Equal settings, equal fingerprints; any change, another one.
	seen := map[string]string{"defaults": defaultFP, "full": fullFP}
	for name, tt := range map[string]*TLS{
		"full again":    {CAFile: caFile, ServerName: "db.internal", InsecureSkipVerify: true, CertFile: certFile, KeyFile: keyFile},
		"server name":   {ServerName: "db.internal"},
		"insecure":      {InsecureSkipVerify: true},
		"ca":            {CAFile: caFile},
		"other ca":      {CAFile: otherCA},
		"client":        {CertFile: certFile, KeyFile: keyFile},
		"ca and client": {CAFile: caFile, CertFile: certFile, KeyFile: keyFile},
	} {
		_, fp, err := tt.ClientConfig()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for other, ofp := range seen {
			if fp == ofp && !(name == "full again" && other == "full") {
				t.Errorf("%s has the fingerprint of %s", name, other)
			}
		}
		if name == "full again" && fp != fullFP {
			t.Errorf("equal settings, different fingerprints")
		}
		seen[name] = fp
	}

	for _, tc := range []struct {
		name string
		tls  TLS
		err  string
	}{
		{"missing ca file", TLS{CAFile: missing}, "tls.ca_file: open " + missing},
		{"ca file without certificates", TLS{CAFile: notPEM}, "tls.ca_file: no PEM certificate in " + notPEM},
		{"cert without key", TLS{CertFile: certFile}, "tls.cert_file, tls.key_file: set both or neither"},
		{"key without cert", TLS{KeyFile: keyFile}, "tls.cert_file, tls.key_file: set both or neither"},
		{"missing cert file", TLS{CertFile: missing, KeyFile: keyFile}, "tls.cert_file: open "},
		{"missing key file", TLS{CertFile: certFile, KeyFile: missing}, "tls.key_file: open "},
		{"bad pair", TLS{CertFile: notPEM, KeyFile: notPEM}, "tls.cert_file, tls.key_file: "},
		{"mismatched pair", TLS{CertFile: caFile, KeyFile: keyFile}, "tls.cert_file, tls.key_file: "},
		{"unknown placeholder in ca_file", TLS{CAFile: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}"}, "tls.ca_file: "},
		{"unknown placeholder in server_name", TLS{ServerName: "{nope.x}"}, "tls.server_name: "},
		{"unknown placeholder in cert_file", TLS{CertFile: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}", KeyFile: keyFile}, "tls.cert_file: "},
		{"unknown placeholder in key_file", TLS{CertFile: certFile, KeyFile: "{env.CADDY_ACME_TEST_UNSET_VARIABLE}"}, "tls.key_file: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, fp, err := tc.tls.ClientConfig()
			if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Fatalf("error = %v, want one starting with %q", err, tc.err)
			}
			if cfg != nil || fp != "" {
				t.Fatalf("a configuration with the error: %v, %q", cfg, fp)
			}
		})
	}
}

// writeTestCert writes a self-signed certificate to dir/name.pem and its key
// to dir/name.key, and returns the certificate's path.
func writeTestCert(t *testing.T, dir, name string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath
}
