# shellcheck shell=bash
# Consul test server for the storage/consul integration tests. Sourced by
# scripts/install-test-servers.sh, which provides log, die, need_cmd and
# BIN_DIR.
#
# Consul is not packaged for Debian, and releases after 1.16 are not open
# source, so the last MPL-2.0 release (v1.15.4) is built from the Go module
# proxy in a throwaway module outside the repository (see
# /work/shared/test-servers.md for why each step is needed):
#   - GONOSUMDB for two Consul submodules the checksum database lacks;
#   - Consul's own excludes of go-msgpack v1.1.5/v1.1.6 repeated (excludes
#     are not inherited by a dependent module);
#   - github.com/hashicorp/consul/api raised to v1.23.0 (MPL-2.0): the version
#     Consul v1.15.4 names (v1.21.0) lacks symbols its tree uses. This applies
#     to the build module only, never to the repository's go.mod.
# Cold: about 4 min of downloads and 6 min of compiling on 2 cores; 145 MB.

CONSUL_VERSION="v1.15.4"
CONSUL_API_VERSION="v1.23.0"
CONSUL_GONOSUMDB="github.com/hashicorp/consul/envoyextensions,github.com/hashicorp/consul/troubleshoot"

# consul_go runs go with the build module's settings.
consul_go() {
	GONOSUMDB="$CONSUL_GONOSUMDB" GOFLAGS="${GOFLAGS:-} -mod=mod" go "$@"
}

# consul_bin_version BINARY prints "v1.15.4" for a working Consul binary.
consul_bin_version() {
	"$1" version 2>/dev/null | awk 'NR == 1 && $1 == "Consul" { print $2; exit }'
}

install_consul() {
	local path="$BIN_DIR/consul" have
	if [[ -x "$path" ]]; then
		have="$(consul_bin_version "$path")"
		if [[ "$have" == "$CONSUL_VERSION" ]]; then
			log "consul: $path is already Consul $CONSUL_VERSION, nothing to do"
			return 0
		fi
		log "consul: $path is version '${have:-unknown}', want $CONSUL_VERSION"
	fi
	need_cmd go
	need_cmd sha256sum

	# The build directory is keyed by the recipe, so a changed recipe never
	# reuses a stale module.
	local recipe hash dir
	recipe="consul=$CONSUL_VERSION api=$CONSUL_API_VERSION exclude=go-msgpack@v1.1.5,v1.1.6 gonosumdb=$CONSUL_GONOSUMDB"
	hash="$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
	dir="${CADDY_ACME_BUILD:-$HOME/.cache/caddy-acme/build}/consul-$CONSUL_VERSION-$hash"
	mkdir -p "$dir"
	log "consul: building Consul $CONSUL_VERSION in $dir (cold: ~4 min downloads + ~6 min compile)"

	local t0 t1 t2
	t0=$(date +%s)
	# (set -e does not apply inside a command followed by ||, hence &&.)
	(
		cd "$dir" &&
			{ [[ -f go.mod ]] || consul_go mod init caddy-acme-consul-build 2>/dev/null; } &&
			consul_go mod edit \
				-exclude=github.com/hashicorp/go-msgpack@v1.1.5 \
				-exclude=github.com/hashicorp/go-msgpack@v1.1.6 &&
			consul_go get "github.com/hashicorp/consul@$CONSUL_VERSION" "github.com/hashicorp/consul/api@$CONSUL_API_VERSION" &&
			# Download exactly the modules the build needs (not the whole graph).
			consul_go list -deps github.com/hashicorp/consul >/dev/null
	) || die "consul: fetching modules failed (see above)"
	t1=$(date +%s)
	log "consul: modules ready in $((t1 - t0)) s; compiling"
	(cd "$dir" && consul_go build -o "$path.tmp" github.com/hashicorp/consul) ||
		die "consul: go build failed (see above)"
	mv -f "$path.tmp" "$path"
	t2=$(date +%s)
	have="$(consul_bin_version "$path")"
	[[ "$have" == "$CONSUL_VERSION" ]] || die "consul: built $path reports version '${have:-unknown}', want $CONSUL_VERSION"
	log "consul: installed $path (Consul $have; downloads $((t1 - t0)) s, compile $((t2 - t1)) s, total $((t2 - t0)) s)"
}
