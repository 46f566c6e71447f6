#!/usr/bin/env bash
# bench/compare.sh REV [ROUNDS] — the spine's N=100 table, this checkout against git revision REV,
# side by side: both sides' netmgr-bench and podctl are built (each as its own Makefile built podctl
# then), and their runs alternate ROUNDS times (default 3) in one throwaway network namespace, so that
# the machine's load falls on both alike. Prints every run and the mean per side with the ratio.
# Like bench/run.sh it touches nothing outside the namespace and scratch dir it makes.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
REV=${1:?usage: bench/compare.sh REV [ROUNDS]}
ROUNDS=${2:-3}
GO=${GO:-go}
source bench/lib.sh
export TMPDIR=${TMPDIR:-/dev/shm}
bench_init compare
NS=$WORK/benchns
OLD=$WORK/old-src
git worktree add -q --detach "$OLD" "$REV"
# bench_cleanup (bench/lib.sh) removes the namespace and scratch dir on every exit; the worktree goes too.
cleanup_compare() { git -C "$ROOT" worktree remove --force "$OLD" 2>/dev/null || true; bench_cleanup; }
trap cleanup_compare EXIT
log "building $REV and this checkout"
(cd "$OLD" && "$GO" build -o "$WORK/old-bench" ./bench/cmd/netmgr-bench && "$GO" build -o "$WORK/old-podctl" ./examples/podctl)
CGO_ENABLED=0 "$GO" build -o "$WORK/new-bench" ./bench/cmd/netmgr-bench
CGO_ENABLED=0 "$GO" build -o "$WORK/new-podctl" ./examples/podctl
bench_netns "$NS"
for r in $(seq 1 "$ROUNDS"); do
	for side in old new; do
		mkdir -p "$WORK/$side$r"
		bench_run nsenter --net="$NS" "$WORK/$side-bench" -netns "$NS" -work "$WORK/$side$r" -podctl "$WORK/$side-podctl" \
			-n 100 -n-large 100 -cni-large 0 -port-limit=false -settle 1s -out "$WORK/$side$r.txt" >/dev/null
		grep -E "^(create\+attach|delete) +100 " "$WORK/$side$r.txt" | sed "s/^/$side run $r: /"
	done
done
# median COL OP SIDE: the median over the rounds of column COL (3 netmgr, 4 podctl, 5 cni).
median() {
	cat "$WORK"/$3[0-9]*.txt | awk -v op="$2" -v col="$1" '$1 == op && $2 == 100 { print $col }' | sort -n |
		awk '{ v[NR] = $1 } END { printf "%6.2f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
echo "mean of $ROUNDS runs (ms/op)            netmgr  podctl    cni"
for op in create+attach delete; do
	for side in old new; do
		cat "$WORK"/$side[0-9]*.txt | awk -v op="$op" -v side="$side" -v rev="$REV" '$1 == op && $2 == 100 { n++; a += $3; b += $4; c += $5 }
			END { printf "  %-14s %-4s %-12s %6.2f  %6.2f  %6.2f\n", op, side, (side == "old" ? rev : "this"), a/n, b/n, c/n }'
	done
done
# A run that another process's load slowed moves the mean; the median of the rounds less so.
echo "median of $ROUNDS runs (ms/op)          netmgr  podctl    cni"
for op in create+attach delete; do
	for side in old new; do
		label=this
		[[ $side == old ]] && label=$REV
		printf "  %-14s %-4s %-12s %s  %s  %s\n" "$op" "$side" "$label" "$(median 3 "$op" $side)" "$(median 4 "$op" $side)" "$(median 5 "$op" $side)"
	done
done
