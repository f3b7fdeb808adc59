#!/usr/bin/env bash
# caddy-acme demo (`make demo`): a local Pebble ACME CA issues a certificate to
# Caddy, with real HTTP-01 validation, on the first TLS handshake for an
# allowed name — Kong's ACME plugin flow, run by Caddy.
#
#   1. installs what is missing: curl and openssl (apt-get), Pebble and
#      pebble-challtestsrv (scripts/install-test-servers.sh pebble)
#   2. builds bin/caddy with the caddy-acme modules
#   3. starts pebble-challtestsrv (DNS: every name is 127.0.0.1) and Pebble
#      (HTTPS API with a throwaway CA made here), on free 127.0.0.1 ports
#   4. starts Caddy with examples/Caddyfile
#   5. connects as a client: the handshake for an allowed name gets a
#      certificate that verifies against Pebble's root; a name not in
#      `domains` is refused
#   6. stops everything it started
#
# Everything runs on 127.0.0.1 in .demo/ (recreated on every run; logs stay
# there afterwards). Exit status 0 means the allowed name got a certificate
# that verified against Pebble's root.
#
# Environment: CADDY_ACME_BIN (where Pebble is installed, default
# ~/.cache/caddy-acme/bin), GO (go command, default go).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="$ROOT/.demo"
BIN_DIR="${CADDY_ACME_BIN:-$HOME/.cache/caddy-acme/bin}"
GO="${GO:-go}"
CADDY="$ROOT/bin/caddy"
CADDYFILE="$ROOT/examples/Caddyfile"

ALLOWED="demo.caddy-acme.test" # listed in examples/Caddyfile's domains
ALLOWED_WILD="www.demo.example" # matches *.demo.example there
REFUSED="evil.example"          # not listed: must be refused

START_ATTEMPTS=3 # port clashes with other programs are retried with new ports
ISSUE_WAIT=60    # seconds the first handshake may take (issuance included)

PIDS=()             # every process this script started, in start order
declare -A TAKEN=() # ports chosen by this run
WORK_DIR_MADE=""    # set once .demo/ holds this run's files
CERTS_MADE=""       # set once Pebble's listener certificate is made

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'demo: %s\n' "$*" >&2; }
die() {
	warn "error: $*"
	exit 1
}

# ---------------------------------------------------------------- cleanup ---

# stop_pid PID: TERM, wait up to 5 s, then KILL.
stop_pid() {
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || {
		wait "$pid" 2>/dev/null || true
		return 0
	}
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		warn "process $pid did not stop in 5s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

# stop_all stops the started processes, last started first.
stop_all() {
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${PIDS[i]}"
	done
	PIDS=()
}

show_tail() {
	local file=$1
	[[ -s "$file" ]] || return 0
	printf '\n--- last lines of %s ---\n' "$file" >&2
	tail -n 40 "$file" >&2
}

on_exit() {
	local status=$?
	set +e # clean up whatever fails
	trap - EXIT HUP INT TERM
	trap '' PIPE # output may be a closed pipe: never die before the clean-up
	if ((${#PIDS[@]} > 0)); then
		step "Stopping Caddy, Pebble and pebble-challtestsrv"
		stop_all
	fi
	if ((status == 129 || status == 130 || status == 141 || status == 143)); then
		printf '\nDEMO INTERRUPTED. Logs: %s/{caddy,pebble,challtestsrv}.log\n' "$DEMO_DIR" >&2
	elif ((status != 0)) && [[ -z "$WORK_DIR_MADE" ]]; then
		printf '\nDEMO FAILED (exit status %d) before it started any server.\n' "$status" >&2
	elif ((status != 0)); then
		[[ -n "$CERTS_MADE" ]] || show_tail "$DEMO_DIR/openssl.log"
		show_tail "$DEMO_DIR/challtestsrv.log"
		show_tail "$DEMO_DIR/pebble.log"
		show_tail "$DEMO_DIR/caddy.log"
		printf '\nDEMO FAILED (exit status %d). Logs: %s/{caddy,pebble,challtestsrv}.log\n' "$status" "$DEMO_DIR" >&2
	else
		printf '\nLogs: %s/caddy.log, pebble.log, challtestsrv.log\n' "$DEMO_DIR"
	fi
	exit "$status"
}
trap on_exit EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers ---

# free_port VAR sets VAR to a 127.0.0.1 port nothing uses (TCP or UDP, any
# address), below the kernel's ephemeral range so outgoing connections cannot
# take it meanwhile, and not chosen before by this run. Only bash and /proc.
free_port() {
	local var=$1 low=32768 range port hex f i
	if read -r range _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null; then
		low=$range
	fi
	((low > 12000)) || low=32768
	local -A used=()
	for f in /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6; do
		[[ -r "$f" ]] || continue
		while read -r _ hex _; do
			hex=${hex##*:}
			[[ "$hex" =~ ^[0-9A-Fa-f]{4}$ ]] && used[$((16#$hex))]=1
		done <"$f"
	done
	for ((i = 0; i < 1000; i++)); do
		port=$((10000 + (RANDOM * 32768 + RANDOM) % (low - 10000)))
		if [[ -z "${used[$port]:-}" && -z "${TAKEN[$port]:-}" ]]; then
			TAKEN[$port]=1
			printf -v "$var" '%d' "$port"
			return 0
		fi
	done
	die "found no free port"
}

# port_open PORT: whether something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
	timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# wait_for SECONDS WHAT PID LOG CMD...: run CMD until it succeeds. Fails if
# SECONDS pass, or the process PID exits, or LOG says a port was taken
# (status 2, so the caller can retry with other ports).
wait_for() {
	local secs=$1 what=$2 pid=$3 log=$4
	shift 4
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		if grep -q 'address already in use' "$log" 2>/dev/null; then
			warn "$what: a port was taken by another program meanwhile"
			return 2
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			grep -q 'address already in use' "$log" 2>/dev/null && return 2
			warn "$what: process exited during start-up (see $log)"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			warn "$what: not ready after ${secs}s (see $log)"
			return 1
		fi
		sleep 0.1
	done
}

# ----------------------------------------------------------------- steps ---

install_prerequisites() {
	step "1. Prerequisites"
	local pkgs=() cmd
	for cmd in curl openssl; do
		command -v "$cmd" >/dev/null 2>&1 || pkgs+=("$cmd")
	done
	if ((${#pkgs[@]} > 0)); then
		command -v apt-get >/dev/null 2>&1 || die "please install: ${pkgs[*]}"
		((EUID == 0)) || die "please install (as root: apt-get install -y ${pkgs[*]}): ${pkgs[*]}"
		info "installing ${pkgs[*]} with apt-get"
		export DEBIAN_FRONTEND=noninteractive
		if ! apt-get install -y -q "${pkgs[@]}"; then
			info "apt-get install failed; updating the package lists and trying again"
			apt-get update -q
			apt-get install -y -q "${pkgs[@]}"
		fi
		for cmd in "${pkgs[@]}"; do
			command -v "$cmd" >/dev/null 2>&1 || die "$cmd is still not on PATH after apt-get install"
		done
	fi
	if ! command -v "$GO" >/dev/null 2>&1 && [[ "$GO" == go && -x /usr/local/go/bin/go ]]; then
		export PATH="/usr/local/go/bin:$PATH" # Go's default install location
	fi
	command -v "$GO" >/dev/null 2>&1 || die "Go is required (https://go.dev/dl/)"
	info "curl: $(curl --version | head -n 1 | cut -d' ' -f1-2), openssl: $(openssl version | cut -d' ' -f1-2), go: $("$GO" env GOVERSION)"
	CADDY_ACME_BIN="$BIN_DIR" "$ROOT/scripts/install-test-servers.sh" pebble | sed 's/^/    /'
}

build_caddy() {
	step "2. Building Caddy with caddy-acme: bin/caddy"
	(cd "$ROOT" && "$GO" build -o "$CADDY" ./cmd/caddy)
	info "$("$CADDY" version | head -n 1)"
	local modules
	modules=$("$CADDY" list-modules 2>/dev/null | grep -E '^(acme|tls\.get_certificate\.acme|http\.handlers\.acme_challenge)$' || true)
	[[ $(wc -l <<<"$modules") -eq 3 ]] || die "bin/caddy lacks the caddy-acme modules"
	info "modules: ${modules//$'\n'/, }"
}

make_work_dir() {
	step "3. Work directory $DEMO_DIR"
	[[ "$DEMO_DIR" == */.demo ]] || die "refusing to remove $DEMO_DIR"
	rm -rf "$DEMO_DIR"
	mkdir -p "$DEMO_DIR/storage" "$DEMO_DIR/caddy-config" "$DEMO_DIR/caddy-data"
	WORK_DIR_MADE=1

	# Pebble serves its ACME API over HTTPS: a throwaway CA and a listener
	# certificate for 127.0.0.1/localhost, ECDSA P-256, valid for a day.
	local d=$DEMO_DIR
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$d/listener-ca.key" -out "$d/listener-ca.pem" -days 1 \
		-subj "/CN=caddy-acme demo Pebble listener CA" \
		-addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>>"$d/openssl.log"
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$d/listener.key" -out "$d/listener.csr" -subj "/CN=127.0.0.1" 2>>"$d/openssl.log"
	printf '%s\n' \
		"basicConstraints=critical,CA:FALSE" \
		"keyUsage=critical,digitalSignature" \
		"extendedKeyUsage=serverAuth" \
		"subjectAltName=IP:127.0.0.1,DNS:localhost" >"$d/listener.ext"
	openssl x509 -req -in "$d/listener.csr" -CA "$d/listener-ca.pem" -CAkey "$d/listener-ca.key" \
		-CAcreateserial -days 1 -extfile "$d/listener.ext" -out "$d/listener.pem" 2>>"$d/openssl.log"
	openssl verify -CAfile "$d/listener-ca.pem" "$d/listener.pem" >>"$d/openssl.log" 2>&1 ||
		die "the generated Pebble listener certificate does not verify"
	CERTS_MADE=1
	info "Pebble API certificate: $d/listener.pem (CA: $d/listener-ca.pem)"
}

# start_servers: one attempt at starting pebble-challtestsrv, Pebble and
# Caddy on fresh ports. Returns 2 if a port was taken (retry), 1 on failure.
start_servers() {
	free_port DNS_PORT
	free_port CHALL_PORT
	free_port PEBBLE_PORT
	free_port PEBBLE_MGMT_PORT
	free_port PEBBLE_TLS_PORT # TLS-ALPN-01: unused, caddy-acme validates with HTTP-01
	free_port HTTP_PORT
	free_port HTTPS_PORT
	free_port ADMIN_PORT
	PEBBLE_DIR="https://127.0.0.1:$PEBBLE_PORT/dir"
	PEBBLE_MGMT="https://127.0.0.1:$PEBBLE_MGMT_PORT"
	local d=$DEMO_DIR pid

	step "4. pebble-challtestsrv: DNS on 127.0.0.1:$DNS_PORT, every name resolves to 127.0.0.1"
	"$BIN_DIR/pebble-challtestsrv" -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
		-dnsserver "127.0.0.1:$DNS_PORT" -http01 "" -https01 "" -tlsalpn01 "" -doh "" \
		-management "127.0.0.1:$CHALL_PORT" >"$d/challtestsrv.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	wait_for 15 pebble-challtestsrv "$pid" "$d/challtestsrv.log" \
		port_open "$DNS_PORT" || return
	wait_for 15 pebble-challtestsrv "$pid" "$d/challtestsrv.log" \
		port_open "$CHALL_PORT" || return
	info "ready (pid $pid)"

	step "5. Pebble: ACME directory $PEBBLE_DIR, HTTP-01 validation connects to port $HTTP_PORT (Caddy)"
	cat >"$d/pebble-config.json" <<-EOF
		{
		  "pebble": {
		    "listenAddress": "127.0.0.1:$PEBBLE_PORT",
		    "managementListenAddress": "127.0.0.1:$PEBBLE_MGMT_PORT",
		    "certificate": "$d/listener.pem",
		    "privateKey": "$d/listener.key",
		    "httpPort": $HTTP_PORT,
		    "tlsPort": $PEBBLE_TLS_PORT,
		    "ocspResponderURL": "",
		    "externalAccountBindingRequired": false,
		    "keyAlgorithm": "ecdsa",
		    "profiles": {
		      "default": {"description": "caddy-acme demo", "validityPeriod": 7776000}
		    }
		  }
		}
	EOF
	PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
		"$BIN_DIR/pebble" -config "$d/pebble-config.json" \
		-dnsserver "127.0.0.1:$DNS_PORT" -strict=false >"$d/pebble.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	wait_for 60 Pebble "$pid" "$d/pebble.log" \
		curl -fsS --max-time 2 --cacert "$d/listener-ca.pem" "$PEBBLE_DIR" || return
	wait_for 15 Pebble "$pid" "$d/pebble.log" \
		curl -fsS --max-time 2 --cacert "$d/listener-ca.pem" -o "$d/pebble-root.pem" "$PEBBLE_MGMT/roots/0" || return
	info "ready (pid $pid); issuing root (changes at every start): $d/pebble-root.pem"
	info "$(openssl x509 -in "$d/pebble-root.pem" -noout -subject)"

	step "6. Caddy: $CADDY run --config examples/Caddyfile --adapter caddyfile"
	info "HTTP 127.0.0.1:$HTTP_PORT, HTTPS 127.0.0.1:$HTTPS_PORT, admin 127.0.0.1:$ADMIN_PORT, log $d/caddy.log"
	# The Caddyfile reads these with {$VAR}; XDG_* keep Caddy's own files
	# (autosave.json, ...) in the work directory.
	DEMO_ADMIN="127.0.0.1:$ADMIN_PORT" \
		DEMO_HTTP_PORT="$HTTP_PORT" \
		DEMO_HTTPS_PORT="$HTTPS_PORT" \
		DEMO_STORAGE="$d/storage" \
		DEMO_ACME_API="$PEBBLE_DIR" \
		DEMO_ACME_ROOTS="$d/listener-ca.pem" \
		XDG_CONFIG_HOME="$d/caddy-config" \
		XDG_DATA_HOME="$d/caddy-data" \
		"$CADDY" run --config "$CADDYFILE" --adapter caddyfile >"$d/caddy.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	CADDY_PID=$pid
	wait_for 30 Caddy "$pid" "$d/caddy.log" port_open "$HTTPS_PORT" || return
	wait_for 10 Caddy "$pid" "$d/caddy.log" port_open "$HTTP_PORT" || return
	info "ready (pid $pid)"
}

start_with_retries() {
	local attempt rc
	for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
		rc=0
		start_servers || rc=$?
		((rc == 0)) && return 0
		((rc == 2 && attempt < START_ATTEMPTS)) || exit 1
		info "retrying with other ports (attempt $((attempt + 1)) of $START_ATTEMPTS)"
		stop_all # the ports tried stay in TAKEN, so other ones are chosen
	done
}

# fetch NAME: an HTTPS request to Caddy for NAME that must verify against
# Pebble's root; prints the response and how long it took.
fetch() {
	local name=$1 out
	if ! out=$(curl -sS --max-time "$ISSUE_WAIT" \
		--resolve "$name:$HTTPS_PORT:127.0.0.1" --cacert "$DEMO_DIR/pebble-root.pem" \
		-w '\n%{time_total}' "https://$name:$HTTPS_PORT/" 2>&1); then
		warn "request for $name failed: ${out%$'\n'*}"
		return 1
	fi
	info "response: ${out%$'\n'*}"
	info "took ${out##*$'\n'} s"
}

# show_cert NAME: the certificate Caddy serves for NAME, verified against
# Pebble's root.
show_cert() {
	local name=$1 out="$DEMO_DIR/s_client-$1.txt"
	timeout 20 openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "$name" \
		-CAfile "$DEMO_DIR/pebble-root.pem" -verify_hostname "$name" -verify_return_error \
		-showcerts </dev/null >"$out" 2>&1 || {
		warn "openssl s_client for $name failed:"
		tail -n 5 "$out" >&2
		return 1
	}
	openssl x509 -in "$out" -noout -subject -issuer -enddate -ext subjectAltName |
		sed -e 's/^subject=$/subject= (empty: Pebble puts the name in the subjectAltName only)/' -e 's/^/    /'
	info "$(grep -m1 'Verify return code' "$out" | sed 's/^ *//') — verified against Pebble's root"
}

demo_client() {
	step "7. HTTPS request for $ALLOWED (allowed): the handshake orders the certificate from Pebble"
	info "curl --resolve $ALLOWED:$HTTPS_PORT:127.0.0.1 --cacert pebble-root.pem https://$ALLOWED:$HTTPS_PORT/"
	fetch "$ALLOWED"
	info "again (now from Caddy's memory):"
	fetch "$ALLOWED"

	step "8. The certificate Caddy serves for $ALLOWED"
	show_cert "$ALLOWED"

	step "9. $ALLOWED_WILD (matches *.demo.example): a certificate of its own"
	fetch "$ALLOWED_WILD"
	show_cert "$ALLOWED_WILD"

	step "10. $REFUSED (not in domains): the handshake must be refused"
	local out
	if out=$(curl -sS --max-time 20 --resolve "$REFUSED:$HTTPS_PORT:127.0.0.1" \
		--cacert "$DEMO_DIR/pebble-root.pem" "https://$REFUSED:$HTTPS_PORT/" 2>&1); then
		die "$REFUSED was served (\"$out\"), but it is not in domains"
	fi
	info "curl: ${out#curl: }"
	info "REFUSED, as expected: no certificate for a name not in domains"
	local line
	line=$(grep -m1 -F "\"sni\":\"$REFUSED\"" "$DEMO_DIR/caddy.log" | sed -n 's/.*"error":"\([^"]*\)".*/\1/p' || true)
	[[ -z "$line" ]] || info "caddy.log: $line"
	local orders
	orders=$(grep -c 'Added order' "$DEMO_DIR/pebble.log" || true)
	((orders == 2)) || die "Pebble created $orders orders, want 2 (one each for $ALLOWED and $ALLOWED_WILD)"
	info "orders Pebble created: $orders (one each for $ALLOWED and $ALLOWED_WILD; none for $REFUSED)"

	step "11. Plain HTTP: Caddy answers the CA's challenges, redirects anything else"
	info "HTTP-01 validation requests from Pebble answered: $(grep -c '"served key authentication"' "$DEMO_DIR/caddy.log" || true)"
	curl -sS --max-time 10 -o /dev/null --resolve "$ALLOWED:$HTTP_PORT:127.0.0.1" \
		-w "    GET http://$ALLOWED:$HTTP_PORT/hello -> %{response_code} %{redirect_url}\n" \
		"http://$ALLOWED:$HTTP_PORT/hello"
	info "(the redirect names the standard HTTPS port, 443, as it would in production)"

	step "12. What Caddy keeps in storage ($DEMO_DIR/storage)"
	(cd "$DEMO_DIR/storage" && find . -type f -name '*.crt' | sed 's|^\./|    |' | sort)
	if find "$DEMO_DIR/storage" -path "*$REFUSED*" | grep -q .; then
		die "storage holds something for $REFUSED"
	fi
	kill -0 "$CADDY_PID" 2>/dev/null || die "Caddy exited"
}

main() {
	cd "$ROOT"
	install_prerequisites
	build_caddy
	make_work_dir
	start_with_retries
	demo_client
	printf '\nDEMO OK: Caddy obtained certificates for %s and %s from Pebble on the first handshake;\n' "$ALLOWED" "$ALLOWED_WILD"
	printf 'they verify against Pebble'\''s root, and %s was refused.\n' "$REFUSED"
}

main "$@"
