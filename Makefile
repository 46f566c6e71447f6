# netmgr — see README.md. Every target runs as root where it touches the kernel; tests and benchmarks
# work only inside network namespaces they create.
GO      ?= go
BIN     := $(CURDIR)/bin
PKGS    := ./...
export PATH := $(BIN):$(PATH)

.PHONY: all deps build containerd etcd test unit fuzz bench bench-startup lint demo demo-sandbox demo-cluster demo-bgp faults clean

all: build

# podctl-pod is podctl with the pod commands, which link containerd's client; podctl hands `pod ...`
# to it so that its other commands start fast (see examples/podctl/pod_exec.go).
# The binaries are static (CGO_ENABLED=0: Go's own DNS resolver instead of libc's, nothing else in
# them uses cgo): a process per command then maps no libc and runs no dynamic loader, which took
# about a third of podctl's start-up (bench/startup).
BUILD_ENV := CGO_ENABLED=0
build:
	@mkdir -p $(BIN)
	$(BUILD_ENV) $(GO) build -o $(BIN)/ ./examples/...
	$(BUILD_ENV) $(GO) build -tags podctl_pod -o $(BIN)/podctl-pod ./examples/podctl

# containerd and its runc shim at the version go.mod pins (a tool directive), for the pod tests, the
# pod benchmark and the demo. The first build takes a few minutes; later ones come from the cache.
CONTAINERD := $(BIN)/containerd $(BIN)/containerd-shim-runc-v2
containerd: $(CONTAINERD)
$(CONTAINERD) &: go.mod go.sum
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2

# The etcd server at the version go.mod pins for the etcd client, for the etcd store's tests, the
# cluster tests, benchmarks and demo (each starts its own, in a network namespace of its own). It is
# built from tools/etcd, a module of its own: the server's dependencies (otel, bbolt) are newer than
# the ones containerd and netmgr pin, and netmgr links only the client. TestServerVersionMatchesClient
# keeps the two versions one. About a minute on a cold build cache (2 cores), then from the cache.
ETCD := $(BIN)/etcd
etcd: $(ETCD)
$(ETCD): tools/etcd/go.mod tools/etcd/go.sum
	@mkdir -p $(BIN)
	cd tools/etcd && CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/etcd go.etcd.io/etcd/server/v3

# The Debian packages the tests, demo and benchmarks use (installed only if missing).
deps:
	@bash .ci/deps

test: deps build containerd etcd
	$(GO) test -count=1 -timeout 20m $(PKGS)
	$(GO) test -count=1 -tags podctl_pod ./examples/podctl/
	$(MAKE) fuzz

# Unit tests need no privileges: -short skips every kernel test (testutil.RequireRoot), also as
# root. Without -short, kernel tests run where the process has CAP_NET_ADMIN and CAP_SYS_ADMIN.
unit:
	$(GO) test -count=1 -short $(PKGS)
	$(GO) test -count=1 -short -tags podctl_pod ./examples/podctl/

# Each fuzz target for a count of executions (go test fuzzes one target per run). A count, not a
# duration: Go 1.26's coordinator can fail a duration run at its deadline with a bare "context
# deadline exceeded" and no input (go.dev/issue/75804, fixed in 1.27); CI hit it. The counts take
# about 6 s each here. FUZZX=N multiplies them. A failing input is written to the package's
# testdata/fuzz/FUZZNAME/: fix the parser and check the file in as a seed.
FUZZX ?= 1
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParsePublish$$' -fuzztime $$((300000 * $(FUZZX)))x ./netmgr/portmap/
	$(GO) test -run '^$$' -fuzz '^FuzzParseManifest$$' -fuzztime $$((20000 * $(FUZZX)))x ./netmgr/pod/
	$(GO) test -run '^$$' -fuzz '^FuzzAnswer$$' -fuzztime $$((50000 * $(FUZZX)))x ./netmgr/dns/

bench: build
	@DEPS_BENCH=1 bash .ci/deps
	bash bench/run.sh

# Start-up alone (make bench runs it too): an empty Go program, podctl version and podctl network ls
# side by side, medians and ratios (bench/out/startup.txt).
bench-startup: build
	bash bench/startup/run.sh

lint:
	$(GO) vet $(PKGS)
	$(GO) vet -tags podctl_pod ./examples/podctl/
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags podctl_pod ./examples/podctl/

# The README's first command: two pods on containerd talking over a bridge network, inside a demo netns
# (installs runc and busybox-static if missing, builds containerd, starts and stops its own).
# DEMO_FLAGS=--keep leaves it running.
demo:
	bash examples/demo.sh $(DEMO_FLAGS)

# The same without containerd: processes in sandboxes.
demo-sandbox:
	bash examples/demo-sandbox.sh

# Pod networking across hosts: three host namespaces on an underlay, a private etcd, an agent per
# host, an overlay network and a pod per host fetching from the others by pod IP; removes it all.
demo-cluster:
	bash examples/demo-cluster.sh $(DEMO_FLAGS)

# Pods on two racks joined by a BIRD router, routed by the agents' BGP speakers (no tunnel).
demo-bgp:
	bash examples/demo-bgp.sh

# The SIGKILL fault injection test alone (make test runs it too, for about a minute). For a soak run:
# make faults FAULT_DURATION=10m; FAULT_SEED=S replays the commands and kills of a logged seed;
# NETMGR_FAULT_OPS=create,rm (and the other knobs of integration/faults_test.go) pass through.
faults:
	$(if $(FAULT_DURATION),NETMGR_FAULT_DURATION=$(FAULT_DURATION)) $(if $(FAULT_SEED),NETMGR_FAULT_SEED=$(FAULT_SEED)) \
		$(GO) test -count=1 -timeout 0 -run 'TestFaultInjection$$' -v ./integration/

clean:
	rm -rf $(BIN)
