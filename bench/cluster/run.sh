#!/usr/bin/env bash
# bench/cluster/run.sh — issue 9's cluster figures (make bench), from the Go benchmarks in
# netmgr/agent/bench_test.go, run once each (-benchtime 1x) on the cluster test topology: host
# namespaces on an underlay bridge, a private etcd (bin/etcd, make etcd), an agent per host.
#   - sandbox create/delete per op, N=100: overlay on the cluster store (etcd) vs bridge on bbolt,
#     alternated twice in one run, the better round of each side (target: create ratio <= 1.2)
#   - convergence: a fourth host's agent start to every peer programmed, 20 joins, p50/p99 (target p99 < 1 s)
# The tests' own namespaces are made and removed by the benchmarks; writes bench/out/cluster.txt.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
GO=${GO:-go}
OUT=bench/out/cluster.txt
[[ -x bin/etcd ]] || { echo "bench/cluster: bin/etcd missing: run make etcd" >&2; exit 1; }
mkdir -p bench/out
raw=$("$GO" test -count=1 -run '^$' -bench 'BenchmarkCluster' -benchtime 1x ./netmgr/agent/ 2>&1) || {
	echo "$raw" >&2
	exit 1
}
metric() { echo "$raw" | grep "^$1" | tr '\t' '\n' | awk -v m="$2" '$2 == m { print $1 }'; }
{
	echo "# bench/cluster/run.sh ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs)"
	echo "# go test -run '^\$' -bench BenchmarkCluster -benchtime 1x ./netmgr/agent/"
	echo
	printf '%-42s %10s %10s %8s\n' "sandbox, N=100 (ms/op)" overlay bridge ratio
	printf '%-42s %10s %10s %8s\n' "create (overlay on etcd, bridge on bolt)" \
		"$(metric BenchmarkClusterSandboxCreate overlay-create-ms/op)" "$(metric BenchmarkClusterSandboxCreate bridge-create-ms/op)" "$(metric BenchmarkClusterSandboxCreate create-ratio)"
	printf '%-42s %10s %10s %8s\n' "delete" \
		"$(metric BenchmarkClusterSandboxCreate overlay-delete-ms/op)" "$(metric BenchmarkClusterSandboxCreate bridge-delete-ms/op)" "$(metric BenchmarkClusterSandboxCreate delete-ratio)"
	echo
	echo "convergence, 20 joins of a 4th host to 3 peers (agent start -> every peer's route, neighbour, FDB)"
	echo "  p50 $(metric BenchmarkClusterConvergence join-p50-ms) ms   p99 $(metric BenchmarkClusterConvergence join-p99-ms) ms   (target p99 < 1000 ms)"
} | tee "$OUT"
