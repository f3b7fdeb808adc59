#!/usr/bin/env bash
# Installs the real servers the integration tests run against into a cache
# directory, so tests in internal/testenv can find them.
#
#   scripts/install-test-servers.sh            # install everything
#   scripts/install-test-servers.sh pebble     # install only some servers
#
# Binaries go to ${CADDY_ACME_BIN:-$HOME/.cache/caddy-acme/bin}. The script is
# idempotent: a server whose binaries are already present at the pinned
# version is left alone. Each server has its own install_<name> function;
# add new servers (redis, postgres, consul, vault, ...) the same way and list
# them in ALL_SERVERS.
set -euo pipefail

BIN_DIR="${CADDY_ACME_BIN:-$HOME/.cache/caddy-acme/bin}"
ALL_SERVERS=(pebble)

PEBBLE_VERSION="v2.10.3"
PEBBLE_MODULE="github.com/letsencrypt/pebble/v2"

log() { printf 'install-test-servers: %s\n' "$*"; }
die() { printf 'install-test-servers: error: %s\n' "$*" >&2; exit 1; }

need_cmd() {
	command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not on PATH"
}

# go_bin_version BINARY prints the main module version recorded in a Go
# binary's build info (empty if it cannot be read).
go_bin_version() {
	go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

install_pebble() {
	local missing=()
	local name path have
	for name in pebble pebble-challtestsrv; do
		path="$BIN_DIR/$name"
		if [[ ! -x "$path" ]]; then
			missing+=("$name")
			continue
		fi
		have="$(go_bin_version "$path")"
		if [[ "$have" != "$PEBBLE_VERSION" ]]; then
			log "$path is version '${have:-unknown}', want $PEBBLE_VERSION"
			missing+=("$name")
		fi
	done
	if [[ ${#missing[@]} -eq 0 ]]; then
		log "pebble: pebble and pebble-challtestsrv $PEBBLE_VERSION already in $BIN_DIR, nothing to do"
		return 0
	fi
	need_cmd go
	local pkgs=()
	for name in "${missing[@]}"; do
		pkgs+=("$PEBBLE_MODULE/cmd/$name@$PEBBLE_VERSION")
	done
	log "pebble: installing ${missing[*]} $PEBBLE_VERSION into $BIN_DIR (go install, ~1 min cold)"
	# Run outside the repository so its go.mod is neither consulted nor modified.
	(cd / && GOBIN="$BIN_DIR" go install "${pkgs[@]}")
	for name in "${missing[@]}"; do
		[[ -x "$BIN_DIR/$name" ]] || die "pebble: $BIN_DIR/$name missing after go install"
		log "pebble: installed $BIN_DIR/$name ($(go_bin_version "$BIN_DIR/$name"))"
	done
}

# Servers other than Pebble each have a file scripts/install/<name>.sh that
# defines install_<name> (and may use log, die, need_cmd, go_bin_version and
# BIN_DIR from here); each adds its name to ALL_SERVERS.
for f in "$(dirname "${BASH_SOURCE[0]}")"/install/*.sh; do
	[[ -e "$f" ]] || continue
	# shellcheck source=/dev/null
	source "$f"
	ALL_SERVERS+=("$(basename "$f" .sh)")
done

main() {
	local servers=("$@")
	if [[ ${#servers[@]} -eq 0 ]]; then
		servers=("${ALL_SERVERS[@]}")
	fi
	local s
	for s in "${servers[@]}"; do
		if ! declare -F "install_$s" >/dev/null; then
			die "unknown server '$s' (known: ${ALL_SERVERS[*]})"
		fi
	done
	mkdir -p "$BIN_DIR"
	for s in "${servers[@]}"; do
		"install_$s"
	done
	log "done; binaries are in $BIN_DIR"
}

main "$@"
