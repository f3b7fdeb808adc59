# shellcheck shell=bash
# Sourced by scripts/install-test-servers.sh: defines install_redis, which
# installs redis-server, redis-sentinel and redis-cli from Debian's packages
# (redis-server, redis-sentinel, redis-tools) when any of them is missing.
#
# The tests run their own Redis processes on free 127.0.0.1 ports; a Redis
# that the package's systemd unit may start on 6379 is not used and can be
# left running (or stopped with: systemctl disable --now redis-server).

REDIS_PACKAGES=(redis-server redis-sentinel redis-tools)

install_redis() {
	local missing=() name
	for name in redis-server redis-sentinel redis-cli; do
		if ! command -v "$name" >/dev/null 2>&1 && [[ ! -x "$BIN_DIR/$name" ]]; then
			missing+=("$name")
		fi
	done
	if [[ ${#missing[@]} -eq 0 ]]; then
		log "redis: redis-server, redis-sentinel and redis-cli already installed ($(redis_version)), nothing to do"
		return 0
	fi
	log "redis: missing ${missing[*]}; installing Debian packages ${REDIS_PACKAGES[*]}"
	need_cmd apt-get
	local sudo=()
	if [[ "$(id -u)" -ne 0 ]]; then
		need_cmd sudo
		sudo=(sudo)
	fi
	# Update the package lists once per run of this script.
	if [[ -z "${_REDIS_APT_UPDATED:-}" ]]; then
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "redis: apt-get update failed"
		_REDIS_APT_UPDATED=1
	fi
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${REDIS_PACKAGES[@]}" \
		|| die "redis: apt-get install ${REDIS_PACKAGES[*]} failed"
	for name in redis-server redis-sentinel redis-cli; do
		command -v "$name" >/dev/null 2>&1 || die "redis: $name still missing after installing ${REDIS_PACKAGES[*]}"
	done
	log "redis: installed $(redis_version)"
}

# redis_version prints the version of the redis-server on PATH (or in BIN_DIR).
redis_version() {
	local bin
	bin="$(command -v redis-server 2>/dev/null || echo "$BIN_DIR/redis-server")"
	"$bin" --version 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^v=/) { print "redis " substr($i, 3); exit } }'
}
