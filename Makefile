# caddy-acme: `make demo` runs the local demo, `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN ?= $(CURDIR)/bin

.PHONY: all build test test-servers demo bench bench-head bench-micro bench-perf bench-scale fuzz fuzz-short vet fmt-check lint clean

all: build

## build: Caddy with caddy-acme plugged in, as bin/caddy
build:
	$(GO) build -o $(BIN)/caddy ./cmd/caddy

## test-servers: install the real servers the tests start (Pebble, ...)
test-servers:
	scripts/install-test-servers.sh

## test: install missing test servers, check formatting, vet and lint, run all tests with the race detector, then fuzz briefly
test: test-servers fmt-check vet lint
	$(GO) test -race -count=1 -timeout 30m ./...
	$(MAKE) fuzz-short

## demo: a local Pebble CA issues a certificate to Caddy on a real TLS handshake
demo:
	scripts/demo.sh

# The report make bench and its parts write: each go test command (set -x)
# followed by its output. BENCHMARKS.md's tables come from it.
BENCH_REPORT ?= $(BIN)/bench-report.txt
# The benchmarks of perf_bench_test.go, which choose their own sizes and
# iteration counts below; bench-micro skips them.
PERF_BENCH := ^Benchmark(HandshakeCached|HandshakeCold|Scale|Issuance)$$
# $(call bench-run,<go test flags and packages>)
bench-run = set -o pipefail; { set -x; $(GO) test -run '^$$' $(1); } 2>&1 | tee -a $(BENCH_REPORT)

## bench: run every benchmark and write the report to bin/bench-report.txt (about an hour, mostly bench-scale)
bench: bench-head bench-micro bench-perf bench-scale

bench-head:
	@mkdir -p $(dir $(BENCH_REPORT))
	@echo "# $$(date -u +%FT%TZ) $$($(GO) version), $$(nproc) CPUs, load average $$(cut -d' ' -f1-3 /proc/loadavg)" > $(BENCH_REPORT)

## bench-micro: the benchmarks of every package but those of perf_bench_test.go
bench-micro: bench-head
	$(call bench-run,-bench . -skip '$(PERF_BENCH)' -benchmem ./...)

## bench-perf: TLS handshakes, cached (vs Caddy's own) and cold (per backend), and 200 orders against Pebble (about 12 minutes)
bench-perf: bench-head
	$(call bench-run,-bench '^BenchmarkHandshakeCached$$' -benchtime 2000x -count 3 -timeout 30m .)
	$(call bench-run,-bench '^BenchmarkHandshakeCold$$' -benchtime 1000x -timeout 30m .)
	$(call bench-run,-bench '^BenchmarkIssuance$$' -benchtime 1x -timeout 60m .)

## bench-scale: 100 000 certificates per backend: cold start, memory, renewal scan, GET /acme/certificates (about 35 minutes)
bench-scale: bench-head
	$(call bench-run,-bench '^BenchmarkScale$$' -benchtime 1x -timeout 4h .)

# Every fuzz target in the repository, as package:Target.
FUZZ_TARGETS := \
	./internal/allowlist:FuzzMatch \
	./internal/allowlist:FuzzValidate \
	./internal/allowlist:FuzzMatchReference \
	.:FuzzCaddyfile \
	.:FuzzTLSALPNFirstRecord \
	./issuance:FuzzDecodeARI \
	./issuance:FuzzCAAnswer \
	./kongcompat:FuzzAdapt \
	./admin:FuzzHandler \
	./storage/internal/backend:FuzzKeys \
	./storage/internal/backend:FuzzSealer \
	./storage/internal/backend:FuzzParseKey \
	./storage/redis:FuzzKeys \
	./storage/redis:FuzzIndex \
	./storage/consul:FuzzKeys \
	./storage/consul:FuzzList \
	./storage/consul:FuzzManifest \
	./storage/vault:FuzzKeys \
	./storage/vault:FuzzValues \
	./storage/kong:FuzzKeys \
	./storage/kong:FuzzList \
	./storage/kong:FuzzValues

# How long fuzz-short (CI) and fuzz (long runs) fuzz each target.
FUZZ_SHORT_TIME ?= 8s
FUZZ_TIME ?= 5m

# fuzz-each runs every target of FUZZ_TARGETS for $(1) each, and stops at
# the first failure, whose input go test writes to the package's
# testdata/fuzz/<Target>/ (commit it as a seed with the fix). Go before 1.27
# may fail a target with a bare "context deadline exceeded" when -fuzztime
# runs out under load (golang/go#75804): without a failing input, that is
# reported and not counted as a failure.
define fuzz-each
	@set -eo pipefail; log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz: $$name in $$pkg for $(1)"; \
		if ! $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(1) $$pkg 2>&1 | tee "$$log"; then \
			if grep -qx '    context deadline exceeded' "$$log" && \
				! grep -qE 'Failing input written to|^    --- FAIL|panic:' "$$log"; then \
				echo "fuzz: $$name: -fuzztime deadline race of the Go toolchain (golang/go#75804), no failing input: ignored"; \
			else \
				exit 1; \
			fi; \
		fi; \
	done
endef

## fuzz-short: run every fuzz target for FUZZ_SHORT_TIME (8s) each; CI runs it in `make test`
fuzz-short:
	$(call fuzz-each,$(FUZZ_SHORT_TIME))

## fuzz: run every fuzz target for FUZZ_TIME (5m) each; one target: make fuzz FUZZ_TARGETS=./storage/consul:FuzzList FUZZ_TIME=1h
fuzz:
	$(call fuzz-each,$(FUZZ_TIME))

vet:
	$(GO) vet ./...

# golangci-lint, pinned (Caddy's configuration, see .golangci.yml), built
# once from the Go module proxy into a cache directory (about 4 minutes).
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(HOME)/.cache/caddy-acme/golangci-lint-$(GOLANGCI_LINT_VERSION)/golangci-lint

$(GOLANGCI_LINT):
	cd / && GOBIN=$(dir $@) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

## lint: golangci-lint with the project's .golangci.yml (installs the pinned version on first use)
lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf $(BIN)
