# qbmond: `make run` builds and starts the daemon, `make test` installs what
# the tests need and runs them all.

GO       ?= go
BIN      := bin/qbmond
# Tools the tests run, and the Debian packages that provide them.
TOOLS    := qemu-storage-daemon qemu-img qemu-io socat nbdinfo nbdcopy nbdkit
DEBS     := qemu-system-common qemu-utils socat libnbd-bin nbdkit
FUZZSCALE ?= 1
SOCK     := $(if $(XDG_RUNTIME_DIR),$(XDG_RUNTIME_DIR)/qbmond/qmp.sock,/tmp/qbmond-$(shell id -u)/qmp.sock)

.PHONY: all build run test deps vet unit fuzz bench perf perf-nbd perf-rss perf-qcow2 perf-bitmaps perf-jobs clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/qbmond

# Start qbmond on the default socket (pass more options with ARGS=...).
run: build
	@echo "qbmond: connect with:  socat READLINE UNIX-CONNECT:$(SOCK)"
	@echo "qbmond: then type:     {\"execute\": \"qmp_capabilities\"}"
	./$(BIN) $(ARGS)

# Install the external tools the tests drive, if any is missing.
deps:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian: $(DEBS))"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y $(DEBS); \
	fi
	$(GO) mod download

test: deps vet unit fuzz

vet:
	$(GO) vet ./...
	$(GO) vet -tags lockcheck ./...
	$(GO) vet -tags cpuprofile ./cmd/qbmond

unit:
	$(GO) test -race -count=1 -timeout 30m -tags lockcheck ./...

# Run every fuzz target briefly (an execution budget each, ~10 s); longer: make fuzz FUZZSCALE=60
fuzz:
	scripts/fuzz.sh $(FUZZSCALE)

bench:
	$(GO) test -run=NONE -bench=. -benchmem ./...

# Side-by-side runs against qemu-storage-daemon; see docs/PERFORMANCE.md.
perf: deps build
	$(GO) run ./tests/perf -qbmond $(BIN)

# Side-by-side nbdcopy throughput against qemu-storage-daemon (needs ~3 GiB in /tmp).
perf-nbd: deps build
	scripts/nbdperf.sh $(BIN)

# Idle resident set (total, anonymous, file pages) 1.5 s after start with
# one QMP monitor, three starts of each daemon (STARTS=, AFTER= to change).
perf-rss: deps build
	scripts/rssperf.sh $(BIN)

perf-qcow2: deps build
	scripts/qcow2perf.sh $(BIN)

perf-bitmaps: deps build
	scripts/bitmapperf.sh $(BIN)

# block-commit (passive, and active under an NBD writer) and backups (full,
# incremental, guest write latency during one) against qemu-storage-daemon,
# with cp as the floor (needs ~6 GiB in /tmp; several minutes). Pick
# workloads with JOBPERF="-run backup,latency", images in memory with
# JOBPERF=-dir=/dev/shm.
perf-jobs: deps build
	$(GO) run ./tests/jobperf -qbmond $(CURDIR)/$(BIN) $(JOBPERF)

clean:
	rm -rf bin
