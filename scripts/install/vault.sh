# shellcheck shell=bash
# Sourced by scripts/install-test-servers.sh: defines install_vault, which
# builds the real Vault server the storage/vault integration tests run against.
#
# Vault is not packaged for Debian, so it is built from the Go module proxy:
# Vault v1.14.10 (the last MPL-2.0 release) in a throwaway module outside the
# repository, with github.com/hashicorp/vault/api v1.10.0 and a local copy of
# github.com/hashicorp/vault/sdk v0.10.2 changed in the four places
# docs (test-servers.md, "Vault") describe — no published sdk matches the tree
# v1.14.10 was released with. The copy lives only in the build directory.
#
# The build directory is keyed by a hash of this file (the recipe), so a
# changed recipe builds afresh and an unchanged one reuses the module cache and
# build cache. Measured cold on 2 cores: 5 min resolving and downloading
# modules, then 10-25 min compiling (25 min while another server was being
# built on the same machine; 18 min of CPU); the binary is ~380 MB.

VAULT_VERSION="v1.14.10"
VAULT_API_VERSION="v1.10.0"
VAULT_SDK_VERSION="v0.10.2"

# vault_bin_version prints the github.com/hashicorp/vault version a binary was
# built from (empty if it cannot be read).
vault_bin_version() {
	go version -m "$1" 2>/dev/null |
		awk '($1 == "dep" || $1 == "mod") && $2 == "github.com/hashicorp/vault" { print $3; exit }'
}

# vault_patch_sdk DIR applies the four changes to the sdk copy in DIR.
vault_patch_sdk() {
	local sdk="$1"
	# 1. logical.EventSender's method is Send in the v1.14 tree, not SendEvent;
	#    rename it and its callers (framework/backend.go, plugin/grpc_events.go).
	#    The gRPC service method (pb.EventsServer.SendEvent) keeps its name.
	perl -0pi -e 's/(type EventSender interface \{\s*)SendEvent\(/$1Send(/; s/sender\.SendEvent\(/sender.Send(/' \
		"$sdk/logical/events.go"
	perl -0pi -e 's/b\.events\.SendEvent\(/b.events.Send(/' "$sdk/framework/backend.go"
	perl -0pi -e 's/func \(s \*GRPCEventsClient\) SendEvent\(/func (s *GRPCEventsClient) Send(/; s/s\.impl\.SendEvent\(/s.impl.Send(/' \
		"$sdk/plugin/grpc_events.go"
	# 2+3. logical.CreateContextOriginalBody / ContextOriginalBodyValue, which
	#    the v1.14 tree calls: a plain context-value pair.
	cat >"$sdk/logical/original_body.go" <<'GO'
package logical

import (
	"context"
	"io"
)

type ctxKeyOriginalBody struct{}

// CreateContextOriginalBody returns a context carrying the request's original body.
func CreateContextOriginalBody(parent context.Context, body io.ReadCloser) context.Context {
	return context.WithValue(parent, ctxKeyOriginalBody{}, body)
}

// ContextOriginalBodyValue returns the original body stored by CreateContextOriginalBody.
func ContextOriginalBodyValue(ctx context.Context) (io.ReadCloser, bool) {
	body, ok := ctx.Value(ctxKeyOriginalBody{}).(io.ReadCloser)
	return body, ok
}
GO
	# 4. Drop the panic for a path that "defines a CreateOperation but no
	#    ExistenceCheck": Vault's own paths trip it at dev-server start.
	perl -0pi -e 's/\n\t\t\/\/ Detect the coding error of attempting to define a CreateOperation without defining an ExistenceCheck\n\t\tif p\.ExistenceCheck == nil \{.*?\n\t\t\}\n//s' \
		"$sdk/framework/backend.go"
	# Check every change landed (a silently unapplied edit would only show up
	# as a compile error ten minutes later).
	grep -q 'Send(ctx context.Context, eventType EventType' "$sdk/logical/events.go" || die "vault: sdk patch 1 (logical/events.go) did not apply"
	grep -q 'b.events.Send(' "$sdk/framework/backend.go" || die "vault: sdk patch 1 (framework/backend.go) did not apply"
	grep -q 'GRPCEventsClient) Send(' "$sdk/plugin/grpc_events.go" || die "vault: sdk patch 1 (plugin/grpc_events.go) did not apply"
	! grep -q 'defines a CreateOperation but no ExistenceCheck' "$sdk/framework/backend.go" || die "vault: sdk patch 4 (framework/backend.go) did not apply"
}

install_vault() {
	local bin="$BIN_DIR/vault"
	local have
	if [[ -x "$bin" ]]; then
		have="$(vault_bin_version "$bin")"
		if [[ "$have" == "$VAULT_VERSION" ]]; then
			log "vault: $bin is $VAULT_VERSION already, nothing to do"
			return 0
		fi
		log "vault: $bin is version '${have:-unknown}', want $VAULT_VERSION"
	fi
	need_cmd go
	need_cmd perl
	local recipe
	recipe="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"
	local cache="${CADDY_ACME_CACHE:-$HOME/.cache/caddy-acme}"
	local dir="$cache/build/vault-$VAULT_VERSION-$recipe"
	local start=$SECONDS t
	mkdir -p "$dir"
	log "vault: building $VAULT_VERSION in $dir (cold: ~5 min downloads + 10-25 min compile on 2 cores)"
	(
		cd "$dir"
		export GOFLAGS=-mod=mod GOWORK=off
		if [[ ! -f go.mod ]]; then
			go mod init caddy-acme-vault-build >/dev/null 2>&1
		fi
		if [[ ! -f sdk-local/.patched ]]; then
			local src
			src="$(go mod download -json "github.com/hashicorp/vault/sdk@$VAULT_SDK_VERSION" |
				awk -F'"' '$2 == "Dir" { print $4 }')"
			[[ -d "$src" ]] || die "vault: could not download sdk $VAULT_SDK_VERSION"
			rm -rf sdk-local
			cp -r "$src" sdk-local
			chmod -R u+w sdk-local
			vault_patch_sdk sdk-local
			touch sdk-local/.patched
		fi
		go mod edit -replace github.com/hashicorp/vault/sdk=./sdk-local
		t=$SECONDS
		go get "github.com/hashicorp/vault@$VAULT_VERSION" "github.com/hashicorp/vault/api@$VAULT_API_VERSION"
		go mod download
		log "vault: dependencies resolved in $((SECONDS - t)) s"
		t=$SECONDS
		go build -o "$bin.tmp" github.com/hashicorp/vault
		log "vault: compiled in $((SECONDS - t)) s"
	) || die "vault: build failed (see output above; build directory $dir)"
	mv -f "$bin.tmp" "$bin"
	have="$(vault_bin_version "$bin")"
	[[ "$have" == "$VAULT_VERSION" ]] || die "vault: built $bin reports version '${have:-unknown}', want $VAULT_VERSION"
	log "vault: installed $bin ($("$bin" version 2>/dev/null | head -n1)) in $((SECONDS - start)) s"
}
