# netmgr — see README.md. Every target runs as root where it touches the kernel; tests and benchmarks
# work only inside network namespaces they create.
GO      ?= go
BIN     := $(CURDIR)/bin
PKGS    := ./...
export PATH := $(BIN):$(PATH)

.PHONY: all build test unit bench lint demo clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./examples/...

# Unit tests need no privileges; kernel tests need root and skip without it.
test: build
	$(GO) test -count=1 -timeout 20m $(PKGS)

unit:
	$(GO) test -count=1 -short $(PKGS)

bench: build
	bash bench/run.sh

lint:
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

# The README's first command: two pods talking over a bridge network, inside a demo netns.
demo:
	bash examples/demo.sh

clean:
	rm -rf $(BIN)
