# netmgr — see README.md. Every target runs as root where it touches the kernel; tests and benchmarks
# work only inside network namespaces they create.
GO      ?= go
BIN     := $(CURDIR)/bin
PKGS    := ./...
export PATH := $(BIN):$(PATH)

.PHONY: all build containerd test unit bench lint demo demo-sandbox clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./examples/...

# containerd and its runc shim at the version go.mod pins (a tool directive), for the pod tests, the
# pod benchmark and the demo. The first build takes a few minutes; later ones come from the cache.
CONTAINERD := $(BIN)/containerd $(BIN)/containerd-shim-runc-v2
containerd: $(CONTAINERD)
$(CONTAINERD) &: go.mod go.sum
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2

# Unit tests need no privileges; kernel tests need root and skip without it.
test: build containerd
	$(GO) test -count=1 -timeout 20m $(PKGS)

unit:
	$(GO) test -count=1 -short $(PKGS)

bench: build
	bash bench/run.sh

lint:
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

# The README's first command: two pods on containerd talking over a bridge network, inside a demo netns
# (installs runc and busybox-static if missing, builds containerd, starts and stops its own).
# DEMO_FLAGS=--keep leaves it running.
demo:
	bash examples/demo.sh $(DEMO_FLAGS)

# The same without containerd: processes in sandboxes.
demo-sandbox:
	bash examples/demo-sandbox.sh

clean:
	rm -rf $(BIN)
