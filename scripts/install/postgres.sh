# shellcheck shell=bash
# PostgreSQL test server for the storage/kong integration tests. Sourced by
# scripts/install-test-servers.sh, which provides log, die and need_cmd.
#
# The tests (internal/testenv/postgres.go) run initdb and postgres from
# /usr/lib/postgresql/<version>/bin, Debian's layout, as the postgres user
# (both refuse to run as root). Debian 12 ships PostgreSQL 15. The collation
# test also needs a non-C locale (en_US.UTF-8, from locales-all), because
# Kong's own database usually has one.

POSTGRES_MAJOR="15"

# postgres_bin_dir prints the newest /usr/lib/postgresql/<v>/bin that has
# initdb, postgres and pg_ctl (empty if none).
postgres_bin_dir() {
	local d best=""
	for d in /usr/lib/postgresql/*/bin; do
		[[ -x "$d/initdb" && -x "$d/postgres" && -x "$d/pg_ctl" ]] || continue
		best="$d"
	done
	printf '%s' "$best"
}

# postgres_apt_install PACKAGE... installs Debian packages, as root or with
# sudo, without starting services where the policy layer allows it.
postgres_apt_install() {
	local sudo=()
	if [[ "$(id -u)" != 0 ]]; then
		command -v sudo >/dev/null 2>&1 || die "postgres: need root (or sudo) to run: apt-get install -y $*"
		sudo=(sudo)
	fi
	need_cmd apt-get
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

install_postgres() {
	local bin missing=()
	bin="$(postgres_bin_dir)"
	if [[ -z "$bin" ]]; then
		missing+=("postgresql-$POSTGRES_MAJOR")
	fi
	if ! locale -a 2>/dev/null | grep -qiE '^en_US\.utf-?8$'; then
		missing+=(locales-all)
	fi
	if [[ ${#missing[@]} -eq 0 ]]; then
		log "postgres: $("$bin/postgres" --version) in $bin and the en_US.UTF-8 locale present, nothing to do"
		return 0
	fi
	log "postgres: installing ${missing[*]} from Debian's packages"
	postgres_apt_install "${missing[@]}"
	bin="$(postgres_bin_dir)"
	[[ -n "$bin" ]] || die "postgres: no /usr/lib/postgresql/*/bin/initdb after installing ${missing[*]}"
	id postgres >/dev/null 2>&1 || die "postgres: the postgres user is missing (the postgresql-$POSTGRES_MAJOR package creates it)"
	locale -a 2>/dev/null | grep -qiE '^en_US\.utf-?8$' || log "postgres: warning: en_US.UTF-8 still missing; the collation test falls back to C.UTF-8"
	log "postgres: $("$bin/postgres" --version) in $bin"
}
