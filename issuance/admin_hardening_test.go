package issuance

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/certmagic"
)

// TestSanityCheckReach: the sanity check asks Options.Orderable (the
// public-CA rule) about the name before connecting and about every address
// it connects to (a name resolving to a refused address is refused), and a
// 5xx answer is reported by its status, never its body.
func TestSanityCheckReach(t *testing.T) {
	var hits atomic.Int32
	const secret = "neighbour-secret-body"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		http.Error(w, secret, http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	errLocal := errors.New("not public")
	allowAll := func(string) error { return nil }

	// the public rule by name: nothing is fetched
	public := buildRuntime(t, noCA, nil, Options{Allow: allowAll, HTTPPort: port, Orderable: func(name string) error {
		if !certmagic.SubjectQualifiesForPublicCert(name) {
			return fmt.Errorf("%s: %w", name, errLocal)
		}
		return nil
	}})
	for _, host := range []string{"127.0.0.2", "127.0.0.1", "10.0.0.1", "localhost", "printer.local"} {
		if err := public.SanityCheck(t.Context(), host); !errors.Is(err, ErrNotAllowed) || !errors.Is(err, errLocal) {
			t.Errorf("SanityCheck(%s) = %v, want the Orderable refusal", host, err)
		}
	}
	// the rule by address: a name allowed by name but resolving to a
	// refused address is not connected to
	byAddr := buildRuntime(t, noCA, nil, Options{Allow: allowAll, HTTPPort: port, Orderable: func(name string) error {
		if ip := net.ParseIP(name); ip != nil && ip.IsLoopback() {
			return fmt.Errorf("%s: %w", name, errLocal)
		}
		return nil
	}})
	if err := byAddr.SanityCheck(t.Context(), "localhost"); !errors.Is(err, errLocal) || !strings.Contains(err.Error(), "resolves to") {
		t.Errorf("SanityCheck(localhost) resolving to loopback = %v, want refused", err)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the refused sanity checks connected %d times", n)
	}

	// a private CA (every name orderable): connects; the status, not the body
	private := buildRuntime(t, noCA, nil, Options{Allow: allowAll, HTTPPort: port})
	err := private.SanityCheck(t.Context(), "127.0.0.1")
	if err == nil || !strings.Contains(err.Error(), "unexpected status code: 500") || strings.Contains(err.Error(), secret) {
		t.Fatalf("SanityCheck against a 500 = %v, want its status only", err)
	}
	if hits.Load() != 1 {
		t.Fatalf("connected %d times, want 1", hits.Load())
	}
	// an invalid name is refused before anything
	if err := private.SanityCheck(t.Context(), "a b"); !errors.Is(err, ErrBadHost) {
		t.Fatalf("SanityCheck(a b) = %v, want ErrBadHost", err)
	}
}

// TestDeleteRefusesBadNames: Delete refuses a name that is not one host
// name (spaces, NUL, backslash, slash, wildcard, overlong) with ErrBadHost,
// so that it never deletes under one name and evicts or publishes another,
// and its storage errors name no file path.
func TestDeleteRefusesBadNames(t *testing.T) {
	r := buildRuntime(t, noCA, nil, Options{Allow: func(string) error { return nil }})
	key := Site(r.issuer.IssuerKey(), "demo.example.com").Cert
	if err := r.storage.Store(t.Context(), key, []byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"demo.example.com ", " demo.example.com", "demo.example.com\x00", `demo.example.com\`, "a/demo.example.com", "a.*.example.com", "**.example.com", "*",
		"demo.example.com..", "", strings.Repeat("a", 5000), strings.Repeat("a", 64) + ".example.com"} {
		if err := r.Delete(t.Context(), host, false); !errors.Is(err, ErrBadHost) {
			t.Errorf("Delete(%.40q) = %v, want ErrBadHost", host, err)
		}
	}
	if !r.storage.Exists(t.Context(), key) {
		t.Fatal("a refused Delete removed the certificate")
	}
	if err := r.Delete(t.Context(), "Demo.Example.com.", false); err != nil {
		t.Fatal(err)
	}
	if r.storage.Exists(t.Context(), key) {
		t.Fatal("Delete of the normalised name left the certificate")
	}
	if err := r.Delete(t.Context(), "demo.example.com", false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Delete of an absent name = %v, want fs.ErrNotExist", err)
	}
}

// TestStorageErrHidesPath: storage errors lose the file path but keep
// their cause.
func TestStorageErrHidesPath(t *testing.T) {
	err := storageErr("loading certificate for a.example", fmt.Errorf("x: %w", &fs.PathError{Op: "open", Path: "/srv/caddy/certificates/a", Err: fs.ErrNotExist}))
	if strings.Contains(err.Error(), "/srv/caddy") || !errors.Is(err, fs.ErrNotExist) || err.Error() != "loading certificate for a.example: open: file does not exist" {
		t.Fatalf("storageErr = %v", err)
	}
}
