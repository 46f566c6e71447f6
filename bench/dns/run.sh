#!/usr/bin/env bash
# bench/dns/run.sh — netmgr's DNS server vs dnsmasq (Debian's dnsmasq-base) serving the same names,
# side by side in one run (issue 12): q/s, p50 and p99 for a sandbox name and a service name, one
# client and 8 in parallel.
#
# Runs inside a throwaway network namespace created here and removed on exit, error or interrupt; the
# root namespace is never touched, and every query goes from a sandbox to its gateway inside it.
# Exit status reflects errors only, never timings.
#
# Environment: BENCH_DNS_DURATION [2s]  BENCH_DNS_ROUNDS [2]  DNSMASQ [/usr/sbin/dnsmasq]
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
GO=${GO:-go}
OUT=$ROOT/bench/out/dns.txt
DNSMASQ=${DNSMASQ:-/usr/sbin/dnsmasq}

source bench/lib.sh
bench_init bench/dns
[[ -x $DNSMASQ ]] || die "no dnsmasq at $DNSMASQ (apt-get install dnsmasq-base; DEPS_BENCH=1 bash .ci/deps)"

NS=$WORK/benchns
echo "bench/dns: building" >&2
"$GO" build -o "$WORK/dnsbench" ./bench/dns
bench_netns "$NS"
args=(-work "$WORK" -duration "${BENCH_DNS_DURATION:-2s}" -rounds "${BENCH_DNS_ROUNDS:-2}" -dnsmasq "$DNSMASQ" -out "$OUT")
args+=(-invocation "bash bench/dns/run.sh (nsenter --net=<bench netns> dnsbench ${args[*]:2})")
echo "bench/dns: running in network namespace $NS" >&2
bench_run nsenter --net="$NS" "$WORK/dnsbench" "${args[@]}"
echo "bench/dns: report written to ${OUT#"$ROOT"/}" >&2
