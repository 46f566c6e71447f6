#!/usr/bin/env bash
# bench/cni/run.sh — CNI ADD and DEL through go-cni: netmgr-cni against Debian's bridge plugin with
# host-local, side by side in one run (part of `make bench`; runs standalone too).
#
# Everything happens inside a throwaway network namespace created here and removed on exit, error or
# interrupt; scratch files (plugin state, IPAM data, libcni's cache, pod namespace pins) live in one
# temp dir, removed at the end. Exit status reflects errors only, never timings.
#
# Environment: BENCH_CNI_N [100]  CNI_PLUGIN_DIR [/usr/lib/cni]  GO [go]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
GO=${GO:-go}
CNI_PLUGIN_DIR=${CNI_PLUGIN_DIR:-/usr/lib/cni}
OUT=$ROOT/bench/out/cni.txt

die() { echo "bench/cni: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root: it creates network namespaces (nothing outside them is changed)"
for tool in unshare nsenter umount; do
	command -v "$tool" >/dev/null || die "missing $tool (util-linux)"
done
[[ -x $CNI_PLUGIN_DIR/bridge && -x $CNI_PLUGIN_DIR/host-local ]] ||
	die "no CNI bridge/host-local plugins in $CNI_PLUGIN_DIR (apt-get install containernetworking-plugins)"
command -v iptables >/dev/null || die "the bridge plugin's ipMasq needs iptables (apt-get install iptables)"

WORK=$(mktemp -d /tmp/netmgr-cni-bench.XXXXXX)
NS=$WORK/benchns
PID=

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
		kill -TERM "$PID" 2>/dev/null || true
		wait "$PID" 2>/dev/null || true
	fi
	# Unmount whatever is still mounted under the scratch dir (pod namespace pins, the bench
	# namespace), deepest first, then delete the dir.
	local m
	awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" || echo "bench/cni: cleanup: could not unmount $m" >&2
	done
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "bench/cni: building netmgr-cni and the benchmark" >&2
mkdir -p "$WORK/bin"
"$GO" build -o "$WORK/bin/netmgr-cni" ./examples/netmgr-cni
"$GO" build -o "$WORK/cnibench" ./bench/cni

touch "$NS"
unshare --net="$NS" true
nsenter --net="$NS" ip link set lo up 2>/dev/null || true

N=${BENCH_CNI_N:-100}
echo "bench/cni: N=$N per side, in network namespace $NS" >&2
nsenter --net="$NS" "$WORK/cnibench" -n "$N" -work "$WORK" -plugin-dir "$WORK/bin" -cni-dir "$CNI_PLUGIN_DIR" \
	-out "$OUT" -invocation "bash bench/cni/run.sh (nsenter --net=<bench netns> cnibench -n $N)" &
PID=$!
wait "$PID"
PID=
echo "bench/cni: report written to ${OUT#"$ROOT"/}" >&2
