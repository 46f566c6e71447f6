#!/usr/bin/env bash
# bench/iperf/run.sh — pod-to-pod TCP throughput with iperf3, side by side in one run (issue 4):
#
#   loopback         one namespace, 127.0.0.1 (the ceiling: no device at all)
#   veth             two namespaces joined by a veth pair
#   bridge, raw      two namespaces on a Linux bridge made with ip(8), no firewall
#   bridge, netmgr   two podctl sandboxes on a netmgr bridge network (its nftables rules loaded)
#   macvlan, raw     two macvlans (bridge mode) of one parent, made with ip(8)
#   macvlan, netmgr  two podctl sandboxes on a netmgr macvlan network on the same kind of parent
#
# Each "netmgr" path is compared with the raw kernel path it uses (target: within 5%, since netmgr adds
# nothing to the data path) and every path with loopback. Rounds rotate the order; the median counts.
#
# Everything runs inside network namespaces created here (touch F; unshare --net=F) and removed on exit,
# error or interrupt; the root namespace is never touched and no packet leaves the machine. Exit status
# reflects errors only, never throughput.
#
# Environment: BENCH_IPERF_TIME [5] seconds per measurement, BENCH_IPERF_ROUNDS [3],
#              PODCTL [./bin/podctl, built if missing]
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
GO=${GO:-go}
OUT=$ROOT/bench/out/iperf.txt
T=${BENCH_IPERF_TIME:-5}
ROUNDS=${BENCH_IPERF_ROUNDS:-3}

source bench/lib.sh
bench_init bench/iperf
for tool in ip awk; do
	command -v "$tool" >/dev/null || die "missing $tool"
done
if ! command -v iperf3 >/dev/null; then
	log "installing iperf3 (Debian package)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 >/dev/null || die "could not install iperf3"
fi


PODCTL=${PODCTL:-$ROOT/bin/podctl}
if [[ ! -x $PODCTL ]]; then
	log "building podctl"
	"$GO" build -o "$WORK/podctl" ./examples/podctl
	PODCTL=$WORK/podctl
fi

ns() { echo "$WORK/ns-$1"; }
mkns() { bench_netns "$(ns "$1")"; }
inns() { local n=$1; shift; nsenter --net="$(ns "$n")" "$@"; }
podctl() { nsenter --net="$(ns hnm)" "$PODCTL" --state-dir "$WORK/state" --run-dir "$WORK/run" "$@"; }

# Sandboxes of podctl are pinned at RUN/netns/NAME; expose them under ns() names too.
sbns() { ln -sf "$WORK/run/netns/$1" "$(ns "$2")"; }

log "setting up namespaces in $WORK"
# loopback
mkns lo
# veth pair
mkns va; mkns vb
inns va ip link add eth0 type veth peer name eth0 netns "$(ns vb)"
inns va ip addr add 10.210.0.1/24 dev eth0; inns va ip link set eth0 up
inns vb ip addr add 10.210.0.2/24 dev eth0; inns vb ip link set eth0 up
# raw bridge: host hraw with bridge rbr, two namespaces on it
mkns hraw; mkns ba; mkns bb
inns hraw ip link add rbr type bridge; inns hraw ip link set rbr up
for p in ba:10.211.0.2 bb:10.211.0.3; do
	n=${p%%:*}; a=${p#*:}
	inns hraw ip link add "v$n" type veth peer name eth0 netns "$(ns "$n")"
	inns hraw ip link set "v$n" master rbr up
	inns "$n" ip addr add "$a/24" dev eth0; inns "$n" ip link set eth0 up
done
# raw macvlan: parent lanr in hraw (its peer up in a LAN namespace), macvlans in ma and mb
mkns lanr; mkns ma; mkns mb
inns hraw ip link add lanr type veth peer name eth0 netns "$(ns lanr)"
inns hraw ip link set lanr up; inns lanr ip link set eth0 up
for p in ma:10.212.0.2 mb:10.212.0.3; do
	n=${p%%:*}; a=${p#*:}
	inns hraw ip link add link lanr name eth0 netns "$(ns "$n")" type macvlan mode bridge
	inns "$n" ip addr add "$a/24" dev eth0; inns "$n" ip link set eth0 up
done
# netmgr: host hnm; a bridge network and a macvlan network on parent lan0 (peer up in namespace lan)
mkns hnm; mkns lan
inns hnm ip link add lan0 type veth peer name eth0 netns "$(ns lan)"
inns hnm ip link set lan0 up; inns lan ip link set eth0 up
podctl network create nbr --driver bridge --subnet 10.213.0.0/24 >/dev/null
podctl network create nmv --driver macvlan --subnet 10.214.0.0/24 --opt parent=lan0 >/dev/null
podctl sandbox create pa --network nbr,ip=10.213.0.2 >/dev/null; sbns pa pa
podctl sandbox create pb --network nbr,ip=10.213.0.3 >/dev/null; sbns pb pb
podctl sandbox create qa --network nmv,ip=10.214.0.2 >/dev/null; sbns qa qa
podctl sandbox create qb --network nmv,ip=10.214.0.3 >/dev/null; sbns qb qb

# measure NAME SERVER_NS SERVER_IP CLIENT_NS: one iperf3 run; sets GBPS (receiver side). It runs in
# this shell (not a subshell) so that cleanup knows the server's pid.
measure() {
	local server=$2 ip=$3 client=$4 spid out
	# nsenter, not the inns function: a function in the background is a subshell, and killing that
	# would leave the iperf3 server running.
	nsenter --net="$(ns "$server")" iperf3 -s -1 -B "$ip" -p 5201 >/dev/null 2>&1 &
	spid=$!
	BENCH_PIDS+=("$spid")
	for _ in $(seq 100); do
		inns "$server" ss -Hltn "sport = :5201" | grep -q . && break
		sleep 0.05
	done
	out=$(timeout $((T + 30)) nsenter --net="$(ns "$client")" iperf3 -c "$ip" -p 5201 --connect-timeout 3000 -t "$T" -O 1 -f g 2>&1) ||
		{ kill "$spid" 2>/dev/null; die "iperf3 for $1 failed: $out"; }
	wait "$spid" 2>/dev/null || true
	GBPS=$(awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Gbits/sec") print $(i-1) }' <<<"$out" | tail -1)
	[[ -n $GBPS ]] || die "no throughput in iperf3 output for $1: $out"
}

PATHS=(loopback veth bridge-raw bridge-netmgr macvlan-raw macvlan-netmgr)
declare -A ARGS=(
	[loopback]="lo 127.0.0.1 lo"
	[veth]="vb 10.210.0.2 va"
	[bridge-raw]="bb 10.211.0.3 ba"
	[bridge-netmgr]="pb 10.213.0.3 pa"
	[macvlan-raw]="mb 10.212.0.3 ma"
	[macvlan-netmgr]="qb 10.214.0.3 qa"
)
declare -A RES
for r in $(seq "$ROUNDS"); do
	# Rotate the order so that no path always runs first or last.
	for i in "${!PATHS[@]}"; do
		p=${PATHS[$(((i + r - 1) % ${#PATHS[@]}))]}
		# shellcheck disable=SC2086
		measure "$p" ${ARGS[$p]}
		log "round $r/$ROUNDS: $p $GBPS Gbit/s"
		RES[$p]="${RES[$p]:-} $GBPS"
	done
done

median() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{a[NR]=$1} END { if (NR % 2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
declare -A MED
for p in "${PATHS[@]}"; do MED[$p]=$(median "${RES[$p]}"); done

{
	echo "netmgr bench/iperf, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "host: $(uname -sr), $(nproc) CPUs, $(iperf3 --version | head -1)"
	echo "command: bash bench/iperf/run.sh (BENCH_IPERF_TIME=$T BENCH_IPERF_ROUNDS=$ROUNDS); one TCP stream, iperf3 -t $T -O 1"
	echo "inside throwaway network namespaces; median of $ROUNDS rounds, order rotated each round"
	echo
	printf '%-16s %10s  %-28s %10s %12s  %s\n' "path" "Gbit/s" "runs" "/loopback" "/raw path" "target netmgr/raw >= 0.95"
	for p in "${PATHS[@]}"; do
		m=${MED[$p]}
		rl=$(awk -v a="$m" -v b="${MED[loopback]}" 'BEGIN { printf "%.2f", a / b }')
		raw="" verdict=""
		case $p in
		bridge-netmgr | macvlan-netmgr)
			base=${MED[${p%-netmgr}-raw]}
			raw=$(awk -v a="$m" -v b="$base" 'BEGIN { printf "%.2f", a / b }')
			verdict=$(awk -v r="$raw" 'BEGIN { print (r >= 0.95) ? "PASS" : "MISS" }')
			;;
		esac
		printf '%-16s %10s  %-28s %10s %12s  %s\n' "$p" "$m" "$(echo ${RES[$p]})" "$rl" "${raw:--}" "$verdict"
	done
	echo
	echo "raw paths are made with ip(8) in a namespace without any firewall; netmgr paths are podctl sandboxes,"
	echo "with netmgr's nftables rules loaded in their host namespace. veth is two namespaces on one veth pair."
} | tee "$OUT"
log "report written to ${OUT#"$ROOT"/}"
