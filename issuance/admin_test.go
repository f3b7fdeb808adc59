package issuance

import (
	"slices"
	"testing"
)

// TestHostsSnapshot: the first page of a listing lists storage; the next
// pages reuse that listing, so a walk over 100k certificates lists storage
// once instead of once per page.
func TestHostsSnapshot(t *testing.T) {
	r := buildRuntime(t, noCA, nil, Options{})
	ctx := t.Context()
	put := func(name string) {
		t.Helper()
		if err := r.storage.Store(ctx, Site(r.issuer.IssuerKey(), name).Cert, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	put("b.example.com")
	put("a.example.com")
	if got, err := r.Hosts(ctx, true); err != nil || !slices.Equal(got, []string{"a.example.com", "b.example.com"}) {
		t.Fatalf("Hosts(fresh) = %v, %v", got, err)
	}
	put("c.example.com")
	if got, _ := r.Hosts(ctx, false); len(got) != 2 {
		t.Fatalf("Hosts(next page) = %v, want the snapshot of the first page", got)
	}
	if got, _ := r.Hosts(ctx, true); len(got) != 3 {
		t.Fatalf("Hosts(fresh) = %v, want the new name", got)
	}
}
