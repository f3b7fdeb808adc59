# caddy-acme: `make demo` runs the local demo, `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN ?= $(CURDIR)/bin

.PHONY: all build test test-servers demo bench fuzz vet fmt-check clean

all: build

## build: Caddy with caddy-acme plugged in, as bin/caddy
build:
	$(GO) build -o $(BIN)/caddy ./cmd/caddy

## test-servers: install the real servers the tests start (Pebble, ...)
test-servers:
	scripts/install-test-servers.sh

## test: install missing test servers, check formatting and vet, run all tests with the race detector
test: test-servers fmt-check vet
	$(GO) test -race -count=1 -timeout 30m ./...

## demo: a local Pebble CA issues a certificate to Caddy on a real TLS handshake
demo:
	scripts/demo.sh

## bench: run the benchmarks
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## fuzz: run each fuzz target briefly
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzMatch -fuzztime 30s ./internal/allowlist/
	$(GO) test -run '^$$' -fuzz FuzzValidate -fuzztime 30s ./internal/allowlist/
	$(GO) test -run '^$$' -fuzz FuzzCaddyfile -fuzztime 30s .
	$(GO) test -run '^$$' -fuzz FuzzAdapt -fuzztime 30s ./kongcompat/

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf $(BIN)
