#!/usr/bin/env bash
# bench/ports/run.sh — publish N ports one by one and compare the last 100 with the first 100 (issue 4).
#
# Runs inside a throwaway network namespace created here (touch F; unshare --net=F) and removed on
# exit, error or interrupt; the root namespace's links, addresses, routes, sysctls and firewall are never
# touched. Scratch files (Manager state, namespace pins) live in one temp dir, removed at the end.
# Exit status reflects errors only, never timings.
#
# Environment: BENCH_PORTS_N [1000]  BENCH_PORTS_MANAGER [true]
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
GO=${GO:-go}
OUT=$ROOT/bench/out/ports.txt

source bench/lib.sh
bench_init bench/ports

NS=$WORK/benchns

echo "bench/ports: building" >&2
"$GO" build -o "$WORK/ports" ./bench/ports
bench_netns "$NS"

N=${BENCH_PORTS_N:-1000}
args=(-netns "$NS" -work "$WORK" -n "$N" -manager="${BENCH_PORTS_MANAGER:-true}" -out "$OUT")
args+=(-invocation "bash bench/ports/run.sh (nsenter --net=<bench netns> ports -n $N)")
echo "bench/ports: running in network namespace $NS" >&2
bench_run nsenter --net="$NS" "$WORK/ports" "${args[@]}"
echo "bench/ports: report written to ${OUT#"$ROOT"/}" >&2
