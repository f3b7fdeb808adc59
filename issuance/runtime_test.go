package issuance

import (
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// TestOptionsDefaults: a zero setting takes its default, except where
// zero means something (no renewal threshold, no backoff).
func TestOptionsDefaults(t *testing.T) {
	r := buildRuntime(t, noCA, nil, Options{IssueTimeout: -1, FirstScanDelay: -1})
	o := r.opts
	if o.IssueTimeout != 90*time.Second || o.FirstScanDelay != time.Minute || o.CacheSyncInterval != 10*time.Second ||
		o.MaxCacheChanges != 1000 || o.HTTPPort != 80 || o.Node == "" || o.Storage != r.magic.Storage {
		t.Fatalf("defaults: %+v", o)
	}
	if o.RenewThreshold != 0 || r.policy().Threshold != 0 || o.FailBackoff != 0 {
		t.Fatalf("a zero threshold or backoff was replaced: %v, %v", o.RenewThreshold, o.FailBackoff)
	}
	if o.OrderEvents != certmagic.RateLimitEvents || o.OrderWindow != certmagic.RateLimitEventsWindow {
		t.Fatalf("order pace %d per %s, want certmagic's", o.OrderEvents, o.OrderWindow)
	}
}
