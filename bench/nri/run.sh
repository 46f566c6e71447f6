#!/usr/bin/env bash
# bench/nri/run.sh — netmgr-nri's hook times on a real containerd (CRI and NRI on, netmgr-cni for the
# primary network): RunPodSandbox with one and with three extra networks, StopPodSandbox and
# RemovePodSandbox, p50/p99/max over BENCH_NRI_N pods of each kind, beside a CNI ADD and DEL of the
# same attachment through go-cni and netmgr-cni (part of `make bench`; runs standalone too).
#
# It is the integration test TestNRIHookTiming with more pods: the test runs everything inside a
# network namespace of its own (containerd, the plugins, the pods) and removes it all at the end,
# also on failure. Exit status reflects errors only, never timings. Report: bench/out/nri.txt.
#
# Environment: BENCH_NRI_N [50]  GO [go]
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
GO=${GO:-go}
OUT=$ROOT/bench/out/nri.txt
[[ $(id -u) -eq 0 ]] || { echo "bench/nri: needs root (network namespaces, containerd)" >&2; exit 1; }
[[ -x $ROOT/bin/containerd ]] || { echo "bench/nri: needs bin/containerd: run make containerd" >&2; exit 1; }
N=${BENCH_NRI_N:-50}
echo "bench/nri: $N pods of each kind through CRI (TestNRIHookTiming)" >&2
NETMGR_NRI_PODS=$N NETMGR_NRI_BENCH_OUT=$OUT "$GO" test -count=1 -timeout 15m -run '^TestNRIHookTiming$' ./integration/ >&2
cat "$OUT"
echo "bench/nri: report written to ${OUT#"$ROOT"/}" >&2
