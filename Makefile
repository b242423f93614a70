# Continuum. "make lab" runs the whole system on loopback; "make test" installs
# what the tests need and runs them.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/continuum-cdp/continuum/appliance.Version=$(VERSION)
BIN     := bin/continuum
LABDIR  ?= $(CURDIR)/.lab

# Packages with concurrency that matters run under the race detector,
# including the vCenter client and the controllers that drive govmomi's
# simulator. Under the race detector the simulator serves its tasks one at a
# time (vcsim/serial.go: in v0.56.0 tasks on different VMs share datastore
# state unlocked), so the test of configuring many VMs while watching also
# runs without it, with the simulator's tasks concurrent. The end-to-end
# tests run real processes and take long enough without it.
RACE_PKGS := ./internal/... ./raftstore/... ./appliance/... ./client/... ./proxy/... ./filter/... ./vsphere/...
PLAIN_PKGS := ./cmd/... ./vcd/... ./vcsim/... ./ova/... ./test/...

.PHONY: all build test test-deps lab bench lint fuzz clean ova test-ova

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/continuum

test-deps:
	./scripts/test-deps.sh

test: test-deps build lint
	$(GO) test -race -timeout 20m $(RACE_PKGS)
	$(GO) test -timeout 20m $(PLAIN_PKGS)
	$(GO) test -timeout 5m -run '^TestConfigureWhileWatching$$' ./vsphere/

lab: build
	$(BIN) lab --dir $(LABDIR) $(LABFLAGS)

bench: test-deps build
	./scripts/bench.sh

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi

fuzz:
	./scripts/fuzz.sh

clean:
	rm -rf bin .lab

# The appliance OVA (out/continuum-VERSION.ova), built from Debian packages
# and the continuum binary; test-ova builds it and boots it under qemu.
ova:
	./ova/image/build.sh $(CURDIR)/out $(VERSION)

test-ova: test-deps
	v="$(VERSION)"; ./ova/image/build.sh $(CURDIR)/out "$$v" && \
	CONTINUUM_OVA=$(CURDIR)/out/continuum-$$v.ova CONTINUUM_OVA_CLUSTER=1 $(GO) test -count=1 -timeout 15m -run '^TestBoot' -v ./ova/
