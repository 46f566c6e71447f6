#!/usr/bin/env bash
# bench/startup/run.sh — process start-up side by side (part of `make bench`; runs standalone too): an
# empty Go program, `podctl version` and `podctl network ls`, round-robin, medians and ratios.
#
# podctl runs inside a throwaway network namespace created here, with state and run dirs in a scratch
# dir; both are removed on exit, error or interrupt. Exit status reflects errors only, never timings.
#
# Environment: BENCH_STARTUP_N [200]  PODCTL [./bin/podctl]  GO [go]
#              PODCTL_COMPARE [none]: another podctl (an older build, say) whose `version` is timed in
#              the same rounds, one more row of the table
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
GO=${GO:-go}
PODCTL=${PODCTL:-$ROOT/bin/podctl}
OUT=$ROOT/bench/out/startup.txt

source bench/lib.sh
export TMPDIR=${TMPDIR:-/dev/shm}
bench_init bench/startup
[[ -x $PODCTL ]] || die "$PODCTL not found (run make build first)"

NS=$WORK/benchns
echo "bench/startup: building the empty program and the benchmark" >&2
"$GO" build -o "$WORK/empty" ./bench/startup/empty
"$GO" build -o "$WORK/startup" ./bench/startup
bench_netns "$NS"
mkdir -p "$ROOT/bench/out"

N=${BENCH_STARTUP_N:-200}
COMPARE=()
if [[ -n ${PODCTL_COMPARE:-} ]]; then
	[[ -x $PODCTL_COMPARE ]] || die "PODCTL_COMPARE=$PODCTL_COMPARE is not an executable"
	COMPARE=(-compare "$PODCTL_COMPARE")
fi
bench_run nsenter --net="$NS" "$WORK/startup" -n "$N" -empty "$WORK/empty" -podctl "$PODCTL" "${COMPARE[@]}" \
	-state-dir "$WORK/state" -run-dir "$WORK/run" -out "$OUT" \
	-invocation "bash bench/startup/run.sh (nsenter --net=<bench netns> startup -n $N${COMPARE:+ -compare $PODCTL_COMPARE})"
echo "bench/startup: report written to ${OUT#"$ROOT"/}" >&2
