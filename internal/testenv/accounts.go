package testenv

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io/fs"
	"os"
	"strings"
	"testing"
)

// StoredAccountKeys returns the PEM keys of the ACME accounts certmagic
// stored in the file storage at dir (its users/<email>/<email>.key files).
func StoredAccountKeys(t testing.TB, dir string) []string {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	fsys := root.FS()
	var keys []string
	err = fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.Contains(path, "/users/") && strings.HasSuffix(path, ".key") {
			data, err := fs.ReadFile(fsys, path)
			if err != nil {
				return err
			}
			keys = append(keys, string(bytes.TrimSpace(data)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// NewAccountKeyPEM returns the PEM of a new ECDSA P-256 key, as an ACME
// account key never registered anywhere.
func NewAccountKeyPEM(t testing.TB) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
}
