#!/usr/bin/env bash
# bench/run.sh — netmgr vs the CNI reference plugins vs podctl, side by side in one run (`make bench`).
#
# Everything runs inside a throwaway network namespace created here and removed on exit, error or
# interrupt; the root namespace's links, addresses, routes, sysctls and firewall are never touched.
# Scratch files (state, namespace pins, CNI IPAM and cache) live in one temp dir, removed at the end.
# Exit status reflects errors only, never timings. See bench/README.md.
#
# Environment knobs (defaults in brackets):
#   BENCH_N [100]  BENCH_N_LARGE [1000]  BENCH_ROUTED_N [100,1000,4000]  BENCH_CNI_LARGE [500, 0 skips]  BENCH_PORT_LIMIT [true]
#   BENCH_SETTLE [2s]  PODCTL [./bin/podctl]  CNI_PLUGIN_DIR [/usr/lib/cni]  NETAVARK [/usr/lib/podman/netavark]
#   TMPDIR [/dev/shm]: where the scratch dir goes (its filesystem matters: pins, lock files, fsync).
#     The default is tmpfs because netmgr's run dir, /run/netmgr, is on tmpfs on a standard Debian
#     host; both sides (netmgr's pins and state, CNI's pins and IPAM files) live there alike.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
GO=${GO:-go}
PODCTL=${PODCTL:-$ROOT/bin/podctl}
CNI_PLUGIN_DIR=${CNI_PLUGIN_DIR:-/usr/lib/cni}
OUT=bench/out/latest.txt

source bench/lib.sh
export TMPDIR=${TMPDIR:-/dev/shm}
bench_init bench
[[ -x $CNI_PLUGIN_DIR/bridge && -x $CNI_PLUGIN_DIR/host-local ]] ||
	die "no CNI bridge/host-local plugins in $CNI_PLUGIN_DIR (apt-get install containernetworking-plugins)"
command -v iptables >/dev/null || die "the CNI bridge plugin's ipMasq needs iptables (apt-get install iptables)"
NETAVARK=${NETAVARK:-/usr/lib/podman/netavark}
if [[ ! -x $NETAVARK ]]; then
	echo "bench: installing netavark (Debian's package) for the netavark column" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q netavark >/dev/null ||
		echo "bench: could not install netavark: the netavark column is skipped" >&2
fi

NS=$WORK/benchns
BIN=$WORK/netmgr-bench

echo "bench: building the benchmark program" >&2
"$GO" build -o "$BIN" ./bench/cmd/netmgr-bench

# Loopback only; the bench namespace has no route off the machine.
bench_netns "$NS"

args=(
	-netns "$NS"
	-work "$WORK"
	-podctl "$PODCTL"
	-cni-dir "$CNI_PLUGIN_DIR"
	-netavark "$NETAVARK"
	-n "${BENCH_N:-100}"
	-n-large "${BENCH_N_LARGE:-1000}"
	-cni-large "${BENCH_CNI_LARGE:-500}"
	-port-limit="${BENCH_PORT_LIMIT:-true}"
	-settle "${BENCH_SETTLE:-2s}"
	-out "$OUT"
)
args+=(-invocation "make bench (bench/run.sh -> nsenter --net=<bench netns> netmgr-bench ${args[*]:6})")

if [[ ! -x $PODCTL ]]; then
	echo "bench: $PODCTL not found: the podctl column is skipped (run 'make build' first)" >&2
fi
echo "bench: running in network namespace $NS (scratch dir $WORK)" >&2
bench_run nsenter --net="$NS" "$BIN" "${args[@]}"
echo "bench: report written to $OUT" >&2
bench_run bash "$ROOT/bench/dns/run.sh" # netmgr's DNS server vs dnsmasq: q/s, p50, p99 (bench/out/dns.txt)
# The others run through bench_run, so that a SIGINT or SIGTERM to this script reaches them at once
# (each cleans up after itself) instead of waiting for them to finish.
if [[ -x $PODCTL ]]; then
	PODCTL=$PODCTL bench_run bash "$ROOT/bench/startup/run.sh" # empty Go program vs podctl version vs podctl network ls (bench/out/startup.txt)
fi
CNI_PLUGIN_DIR=$CNI_PLUGIN_DIR bench_run bash "$ROOT/bench/cni/run.sh"  # netmgr-cni vs the bridge plugin through go-cni (bench/out/cni.txt)
if [[ -x $ROOT/bin/containerd ]]; then
	"$GO" build -o "$WORK/podbench" ./bench/pod # built, not go run: the signal must reach the program
	bench_run "$WORK/podbench" -out "$ROOT/bench/out/pod.txt"
	bench_run bash "$ROOT/bench/nri/run.sh" # netmgr-nri's hooks on CRI pods vs CNI ADD/DEL of the same attachment (bench/out/nri.txt)
else
	echo "bench: pod start benchmark (bench/pod) and NRI hook times (bench/nri) skipped: run make containerd first" >&2
fi
bench_run bash "$ROOT/bench/ports/run.sh"  # publish 1000 ports one by one: last 100 vs first 100 (bench/out/ports.txt)
bench_run bash "$ROOT/bench/iperf/run.sh"  # iperf3 pod to pod: loopback, veth, bridge and macvlan, raw vs netmgr (bench/out/iperf.txt)
"$GO" build -o "$WORK/routedbench" ./bench/routed # built, not go run: the signal must reach the program
bench_run "$WORK/routedbench" -n "${BENCH_ROUTED_N:-100,1000,4000}" -out "$ROOT/bench/out/routed.txt" -png "$ROOT/bench/out/routed.png" # create/delete per op: routed vs bridge vs their bare floors (bench/out/routed.{txt,png})
"$GO" build -o "$WORK/overlaybench" ./bench/overlay # built, not go run: the signal must reach the program
bench_run "$WORK/overlaybench" -out "$ROOT/bench/out/overlay.txt" # iperf3 across two hosts: underlay, hand-built VXLAN, netmgr overlay (bench/out/overlay.txt)
bench_run bash "$ROOT/bench/cluster/run.sh" # cluster: sandbox create on overlay+etcd vs bridge+bolt, join convergence p50/p99 (bench/out/cluster.txt)
bench_run bash "$ROOT/bench/bgp/run.sh" # BGP (issue 13): lease -> router route p50/p99 over 20 nodes vs host-gw, iperf3 pod vs host across the router (bench/out/bgp.txt)
"$GO" build -o "$WORK/servicesbench" ./bench/services
bench_run "$WORK/servicesbench" -out "$ROOT/bench/out/services.txt" # services: full sync, change latency at 100 and 10,000, linear-chain reference, RSS (bench/out/services.txt)
