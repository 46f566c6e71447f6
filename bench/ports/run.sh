#!/usr/bin/env bash
# bench/ports/run.sh — publish N ports one by one and compare the last 100 with the first 100 (issue 4).
#
# Runs inside a throwaway network namespace created here (touch F; unshare --net=F) and removed on
# exit, error or interrupt; the root namespace's links, addresses, routes, sysctls and firewall are never
# touched. Scratch files (Manager state, namespace pins) live in one temp dir, removed at the end.
# Exit status reflects errors only, never timings.
#
# Environment: BENCH_PORTS_N [1000]  BENCH_PORTS_MANAGER [true]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
GO=${GO:-go}
OUT=$ROOT/bench/out/ports.txt

die() { echo "bench/ports: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root: it creates network namespaces (nothing outside them is changed)"
for tool in unshare nsenter mount umount; do
	command -v "$tool" >/dev/null || die "missing $tool (util-linux)"
done

WORK=$(mktemp -d /tmp/netmgr-bench-ports.XXXXXX)
NS=$WORK/benchns
PID=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
		kill -TERM "$PID" 2>/dev/null || true
		wait "$PID" 2>/dev/null || true
	fi
	# Unmount whatever is still mounted under the scratch dir (sandbox pins, the bench namespace),
	# deepest first, then delete the dir.
	awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" || echo "bench/ports: cleanup: could not unmount $m" >&2
	done
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "bench/ports: building" >&2
"$GO" build -o "$WORK/ports" ./bench/ports
touch "$NS"
unshare --net="$NS" true
nsenter --net="$NS" ip link set lo up 2>/dev/null || true

N=${BENCH_PORTS_N:-1000}
args=(-netns "$NS" -work "$WORK" -n "$N" -manager="${BENCH_PORTS_MANAGER:-true}" -out "$OUT")
args+=(-invocation "bash bench/ports/run.sh (nsenter --net=<bench netns> ports -n $N)")
echo "bench/ports: running in network namespace $NS" >&2
nsenter --net="$NS" "$WORK/ports" "${args[@]}" &
PID=$!
wait "$PID"
PID=
echo "bench/ports: report written to ${OUT#"$ROOT"/}" >&2
