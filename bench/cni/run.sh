#!/usr/bin/env bash
# bench/cni/run.sh — CNI ADD and DEL through go-cni: netmgr-cni against Debian's bridge plugin with
# host-local, side by side in one run (part of `make bench`; runs standalone too).
#
# Everything happens inside a throwaway network namespace created here and removed on exit, error or
# interrupt; scratch files (plugin state, IPAM data, libcni's cache, pod namespace pins) live in one
# temp dir, removed at the end. Exit status reflects errors only, never timings.
#
# Environment: BENCH_CNI_N [100]  CNI_PLUGIN_DIR [/usr/lib/cni]  GO [go]
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
GO=${GO:-go}
CNI_PLUGIN_DIR=${CNI_PLUGIN_DIR:-/usr/lib/cni}
OUT=$ROOT/bench/out/cni.txt

source bench/lib.sh
bench_init bench/cni
[[ -x $CNI_PLUGIN_DIR/bridge && -x $CNI_PLUGIN_DIR/host-local ]] ||
	die "no CNI bridge/host-local plugins in $CNI_PLUGIN_DIR (apt-get install containernetworking-plugins)"
command -v iptables >/dev/null || die "the bridge plugin's ipMasq needs iptables (apt-get install iptables)"

NS=$WORK/benchns

echo "bench/cni: building netmgr-cni and the benchmark" >&2
mkdir -p "$WORK/bin"
CGO_ENABLED=0 "$GO" build -o "$WORK/bin/netmgr-cni" ./examples/netmgr-cni # static, as make build builds it
"$GO" build -o "$WORK/cnibench" ./bench/cni

bench_netns "$NS"

N=${BENCH_CNI_N:-100}
echo "bench/cni: N=$N per side, in network namespace $NS" >&2
bench_run nsenter --net="$NS" "$WORK/cnibench" -n "$N" -work "$WORK" -plugin-dir "$WORK/bin" -cni-dir "$CNI_PLUGIN_DIR" \
	-out "$OUT" -invocation "bash bench/cni/run.sh (nsenter --net=<bench netns> cnibench -n $N)"
echo "bench/cni: report written to ${OUT#"$ROOT"/}" >&2
