#!/usr/bin/env bash
# make demo-bgp: pods across racks with no tunnel, routed by BGP. Two racks (two underlay segments,
# 172.31.1.0/24 and 172.31.2.0/24) joined by a router namespace running BIRD 2 (Debian's bird2), a
# node on each rack (network namespaces) running `podctl agent --bgp-as ... --bgp-peer <rack
# router>`, a private etcd, and a routed-global network in BGP mode. Each agent tells the router its
# node's pod subnet; a pod on each node fetches from the other one by pod IP, through the router.
# It prints the sessions, the router's table and the answers, then removes everything and exits 0.
#
# On real machines, with the routers configured to peer with the nodes:
#   podctl --store etcd://ETCD:2379 network create pods --driver routed-global --subnet 10.244.0.0/16 --opt routing=bgp
#   podctl --store etcd://ETCD:2379 agent --underlay THIS_MACHINES_IP --bgp-as 65001 --bgp-peer ROUTER_IP:65000
#
#   bash examples/demo-bgp.sh
set -Eeuo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
if [ "$(id -u)" != 0 ]; then
	echo "demo-bgp: needs root (network namespaces)" >&2
	exit 1
fi
. examples/demo-lib.sh # on, bg, newns, podctl_on, bg_podctl, start_etcd, web_pod, fetch, fetch_mesh, ...
ETCD_EP=172.31.1.11:2379
STORE="etcd://$ETCD_EP?prefix=/demo-bgp/"
NODES="node1 node2"
declare -A ADDR=([node1]=172.31.1.11 [node2]=172.31.2.12) GW=([node1]=172.31.1.1 [node2]=172.31.2.1) ASN=([node1]=65001 [node2]=65002)

need() { command -v "$1" >/dev/null 2>&1; }
if ! need busybox || ! need bird || ! need birdc || ! need nsenter || ! need setsid || ! need timeout; then
	echo "== installing busybox-static, bird2, util-linux, coreutils"
	bash .ci/deps >/dev/null
fi
make -s build etcd

D=$(mktemp -d /tmp/netmgr-bgp.XXXXXX)
cleanup() {
	set +e
	local h
	for h in $NODES; do
		[ -e "$D/$h.ns" ] || continue
		pkill -KILL -f "$D/www" 2>/dev/null
		podctl_on "$D" "$h" sandbox rm web >/dev/null 2>&1
	done
	podctl_on "$D" node1 network rm pods >/dev/null 2>&1
	killall_groups "$D" TERM
	sleep 0.3
	killall_groups "$D" KILL
	unmount_under "$D"
	rm -rf "$D"
}
on_exit() {
	local rc=$?
	trap - ERR
	trap '' INT TERM
	if [ "$rc" != 0 ]; then
		for f in "$D"/*.log; do [ -s "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }; done >&2
	fi
	cleanup
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "demo-bgp: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

# The router: one bridge per rack, forwarding on (in its namespace only), a veth to each node.
newns "$D" rtr
on "$D" rtr sysctl -qw net.ipv4.ip_forward=1
for h in $NODES; do
	rack=rack-$h
	mkdir -p "$D/$h"
	newns "$D" "$h"
	on "$D" rtr ip link add "$rack" type bridge
	on "$D" rtr ip addr add "${GW[$h]}/24" dev "$rack"
	on "$D" rtr ip link set "$rack" up
	on "$D" rtr ip link add "p-$h" type veth peer name eth0 netns "$D/$h.ns"
	on "$D" rtr ip link set "p-$h" master "$rack" up
	on "$D" "$h" ip addr add "${ADDR[$h]}/24" dev eth0
	on "$D" "$h" ip link set eth0 up
	on "$D" "$h" ip route add default via "${GW[$h]}"
done
{
	echo "router id 172.31.1.1; protocol device {} protocol kernel { ipv4 { export all; }; }"
	for h in $NODES; do
		echo "protocol bgp $h { local ${GW[$h]} as 65000; neighbor ${ADDR[$h]} as ${ASN[$h]}; hold time 9; connect retry time 2; graceful restart on; ipv4 { import all; export all; }; }"
	done
} >"$D/bird.conf"
bg nsenter --net="$D/rtr.ns" bird -f -c "$D/bird.conf" -s "$D/bird.ctl" 2>"$D/bird.log"
for _ in $(seq 50); do birdc -s "$D/bird.ctl" show status >/dev/null 2>&1 && break; sleep 0.1; done
echo "== racks 172.31.1.0/24 (node1 .11) and 172.31.2.0/24 (node2 .12), router .1 on each (BIRD, AS 65000); etcd on $ETCD_EP"

start_etcd "$D" node1 172.31.1.11
for h in $NODES; do
	bg_podctl "$D" "$h" agent --underlay "${ADDR[$h]}" --ttl 5s --bgp-as "${ASN[$h]}" --bgp-peer "${GW[$h]}:65000" --bgp-hold-time 9s 2>"$D/agent-$h.log"
done
podctl_on "$D" node1 network create pods --driver routed-global --subnet 10.244.0.0/16 --opt routing=bgp
# Until both sessions are up and the router has both subnets.
for _ in $(seq 150); do
	[ "$(podctl_on "$D" node1 node ls | grep -c 'established, 1 routes advertised')" -ge 2 ] &&
		[ "$(birdc -s "$D/bird.ctl" show route 2>/dev/null | grep -c '^10\.244\.')" -ge 2 ] && break
	sleep 0.1
done
echo
podctl_on "$D" node1 node ls
echo
echo "== the router's table (birdc show route):"
birdc -s "$D/bird.ctl" show route | sed 1d

declare -A IP
for h in $NODES; do web_pod "$D" "$h"; done
echo
for h in $NODES; do echo "== pod web on $h: ${IP[$h]}"; done
# shellcheck disable=SC2086
fetch_mesh "$D" 3 $NODES
echo
echo "== the path from the pod on node1 to the pod on node2 (no tunnel: node1, the router, node2):"
podctl_on "$D" node1 sandbox exec web -- timeout 10 busybox traceroute -n -q 1 -w 1 "${IP[node2]}" 2>&1 | sed 's/^/   /' || true
if [ "$ok" != "$want" ]; then
	echo "demo-bgp: only $ok of $want fetches across the racks succeeded" >&2
	exit 1
fi
echo
echo "== $ok of $want fetches across the racks answered; removing pods, network, agents, BIRD, etcd and the namespaces"
