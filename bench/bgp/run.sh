#!/usr/bin/env bash
# bench/bgp/run.sh — issue 13's BGP figures (make bench), from the Go benchmarks in
# integration/bgp_bench_test.go, run once each (-benchtime 1x) on TestBGPRacks's topology: two racks
# (bridges in a router namespace) joined by BIRD 2 in that namespace, a private etcd (bin/etcd, make
# etcd), a `podctl agent --bgp-as ... --bgp-peer <rack gateway>:65000` process per node namespace
# (hold 6 s, restart 5 s, connect retry 2 s), a routed-global network with routing=bgp.
#   - lease -> route: 20 nodes (10 per rack); from the node's subnet lease key appearing in etcd
#     (this process's watch) to the route to that subnet in the router's kernel (netlink
#     subscription in the router namespace), p50/p99/max; side by side with the host-gw path on one
#     segment (the same lease to the route a node of the same rack installs, 18 samples). Twice: a
#     node joining (agents started one by one, the network already there) and a network created
#     on 20 agents with their sessions up.
#   - throughput: one TCP stream (iperf3) across the router, pod to pod vs host to host between the
#     same two nodes, alternated, medians (target pod/host >= 0.95).
# The benchmarks make and remove their own namespaces, kill their agents and BIRD; writes bench/out/bgp.txt.
# Environment: BENCH_BGP_IPERF_TIME [10] seconds per iperf3 run, BENCH_BGP_IPERF_ROUNDS [3].
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
GO=${GO:-go}
OUT=bench/out/bgp.txt
export BENCH_BGP_IPERF_TIME=${BENCH_BGP_IPERF_TIME:-10} BENCH_BGP_IPERF_ROUNDS=${BENCH_BGP_IPERF_ROUNDS:-3}
[[ -x bin/etcd ]] || { echo "bench/bgp: bin/etcd missing: run make etcd" >&2; exit 1; }
[[ -x /usr/sbin/bird && -x /usr/sbin/birdc ]] || { echo "bench/bgp: BIRD 2 missing: apt-get install bird2 (or bash .ci/deps)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "bench/bgp: iperf3 missing: DEPS_BENCH=1 bash .ci/deps" >&2; exit 1; }
mkdir -p bench/out
CMD="go test -v -count=1 -run '^\$' -bench BenchmarkBGP -benchtime 1x ./integration/"
echo "bench/bgp: $CMD (takes a few minutes)" >&2
raw=$("$GO" test -v -count=1 -run '^$' -bench 'BenchmarkBGP' -benchtime 1x ./integration/ 2>&1) || {
	echo "$raw" >&2
	exit 1
}
# metric BENCHMARK UNIT: the value go test printed for it ("-" when missing).
metric() {
	local v
	v=$(echo "$raw" | grep "^$1-[0-9]*[[:space:]]" | tr '\t' '\n' | awk -v m="$2" '$2 == m { print $1 }')
	echo "${v:--}"
}
for b in BenchmarkBGPLeaseRoute/join BenchmarkBGPLeaseRoute/network-create BenchmarkBGPThroughput; do
	[[ $(metric "$b" lease-route-p50-ms)$(metric "$b" pod-gbps) != -- ]] || { echo "$raw" >&2; echo "bench/bgp: $b reported nothing (skipped?)" >&2; exit 1; }
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
runs() { echo "$raw" | awk -v s="$1" '$0 ~ "round [0-9]+/[0-9]+: " s " to " s " " { for (i = 1; i <= NF; i++) if ($i == "Gbit/s") printf "%s ", $(i-1) }'; }
{
	echo "# bench/bgp/run.sh ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(/usr/sbin/bird --version 2>&1 | head -1), $(iperf3 --version | head -1 | cut -d' ' -f1-2))"
	echo "# $CMD  (BENCH_BGP_IPERF_TIME=$BENCH_BGP_IPERF_TIME BENCH_BGP_IPERF_ROUNDS=$BENCH_BGP_IPERF_ROUNDS)"
	echo
	echo "lease -> route, 20 nodes on 2 racks (ms): lease = the subnet lease key seen by an etcd watch;"
	echo "BGP = route in the router's kernel (BIRD); host-gw = route on a node of the same rack (18 samples)"
	printf '%-40s %-4s %10s %10s %12s\n' "" "" BGP host-gw BGP/host-gw
	for mode in join network-create; do
		b=BenchmarkBGPLeaseRoute/$mode
		case $mode in
		join) title="node joins (agents started one by one)" ;;
		*) title="network created on 20 live sessions" ;;
		esac
		for q in p50 p99 max; do
			printf '%-40s %-4s %10s %10s %12s\n' "$title" "$q" "$(metric "$b" lease-route-$q-ms)" "$(metric "$b" lease-hostgw-$q-ms)" \
				"$(ratio "$(metric "$b" lease-route-$q-ms)" "$(metric "$b" lease-hostgw-$q-ms)")"
			title=""
		done
	done
	echo
	echo "where the BGP time goes (p50 ms; BIRD's table from its log, ms resolution)"
	printf '%-44s %10s %10s\n' "" join net-create
	for row in "agent start (or network create) -> lease:start-lease-p50-ms" "lease -> BIRD's table:lease-bird-p50-ms" \
		"BIRD's table -> router kernel:bird-kernel-p50-ms" "the later of lease, session up -> route:sendable-route-p50-ms" \
		"  the same, p99:sendable-route-p99-ms" "sessions up before the lease (of 20):sessions-up-before-lease"; do
		printf '%-44s %10s %10s\n' "${row%%:*}" "$(metric BenchmarkBGPLeaseRoute/join "${row##*:}")" "$(metric BenchmarkBGPLeaseRoute/network-create "${row##*:}")"
	done
	echo
	echo "one TCP stream across the router, rack A -> rack B, iperf3 -t $BENCH_BGP_IPERF_TIME, median of $BENCH_BGP_IPERF_ROUNDS alternated runs"
	pod=$(metric BenchmarkBGPThroughput pod-gbps) host=$(metric BenchmarkBGPThroughput host-gbps) r=$(metric BenchmarkBGPThroughput pod/host)
	printf '%-40s %10s  %s\n' "pod to pod (BGP network, no tunnel)" "$pod" "Gbit/s  runs: $(runs pod)"
	printf '%-40s %10s  %s\n' "host to host (the nodes' own addresses)" "$host" "Gbit/s  runs: $(runs host)"
	printf '%-40s %10s  %s\n' "pod/host" "$(awk -v r="$r" 'BEGIN { printf "%.3f", r }')" \
		"$(awk -v r="$r" 'BEGIN { print (r >= 0.95) ? "PASS (target >= 0.95)" : "MISS (target >= 0.95)" }')"
} | tee "$OUT"
