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
. examples/demo-lib.sh # on, bg, newns, killall_groups, unmount_under
ETCD_EP=172.31.1.11:2379
NODES="node1 node2"
declare -A ADDR=([node1]=172.31.1.11 [node2]=172.31.2.12) GW=([node1]=172.31.1.1 [node2]=172.31.2.1) ASN=([node1]=65001 [node2]=65002)

podctl_on() {
	local d=$1 h=$2
	shift 2
	on "$d" "$h" ./bin/podctl --store "etcd://$ETCD_EP?prefix=/demo-bgp/" --node "$h" --state-dir "$d/$h/state" --run-dir "$d/$h/run" "$@"
}

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

bg nsenter --net="$D/node1.ns" ./bin/etcd --name demo --data-dir "$D/etcd" --unsafe-no-fsync \
	--listen-client-urls "http://$ETCD_EP" --advertise-client-urls "http://$ETCD_EP" \
	--listen-peer-urls http://172.31.1.11:2380 --initial-advertise-peer-urls http://172.31.1.11:2380 \
	--initial-cluster demo=http://172.31.1.11:2380 --log-level warn --log-outputs stderr 2>"$D/etcd.log"
for _ in $(seq 100); do
	podctl_on "$D" node1 node ls >/dev/null 2>&1 && break
	sleep 0.1
done
for h in $NODES; do
	bg nsenter --net="$D/$h.ns" ./bin/podctl --store "etcd://$ETCD_EP?prefix=/demo-bgp/" --node "$h" --state-dir "$D/$h/state" --run-dir "$D/$h/run" \
		agent --underlay "${ADDR[$h]}" --ttl 5s --bgp-as "${ASN[$h]}" --bgp-peer "${GW[$h]}:65000" --bgp-hold-time 9s 2>"$D/agent-$h.log"
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
for h in $NODES; do
	podctl_on "$D" "$h" sandbox create web --network pods >/dev/null
	IP[$h]=$(podctl_on "$D" "$h" -o json sandbox inspect web | sed -n 's/.*"ipv4": *"\([0-9.]*\)\/.*/\1/p' | head -1)
	mkdir -p "$D/www/$h"
	echo "hello from the pod on $h (${IP[$h]})" >"$D/www/$h/index.html"
	bg nsenter --net="$D/$h.ns" ./bin/podctl --store "etcd://$ETCD_EP?prefix=/demo-bgp/" --node "$h" --state-dir "$D/$h/state" --run-dir "$D/$h/run" \
		sandbox exec web -- busybox httpd -f -p 8080 -h "$D/www/$h"
done
echo
for h in $NODES; do echo "== pod web on $h: ${IP[$h]}"; done
fetch() { podctl_on "$D" "$1" sandbox exec web -- timeout 3 busybox wget -qO- "$2" 2>/dev/null; }
for h in $NODES; do
	for _ in $(seq 50); do fetch "$h" "http://127.0.0.1:8080/" >/dev/null && break; sleep 0.1; done
done
ok=0 want=0
for round in 1 2 3; do
	for from in $NODES; do
		for to in $NODES; do
			[ "$from" = "$to" ] && continue
			want=$((want + 1))
			a=
			for _ in $(seq 20); do a=$(fetch "$from" "http://${IP[$to]}:8080/") && break; sleep 0.2; done
			if [ -n "$a" ]; then
				ok=$((ok + 1))
				echo "[$round] pod on $from -> ${IP[$to]} (on $to, the other rack): $a"
			else
				echo "[$round] pod on $from -> ${IP[$to]} (on $to): FAILED"
			fi
		done
	done
done
echo
echo "== the path from the pod on node1 to the pod on node2 (no tunnel: node1, the router, node2):"
podctl_on "$D" node1 sandbox exec web -- timeout 10 busybox traceroute -n -q 1 -w 1 "${IP[node2]}" 2>&1 | sed 's/^/   /' || true
if [ "$ok" != "$want" ]; then
	echo "demo-bgp: only $ok of $want fetches across the racks succeeded" >&2
	exit 1
fi
echo
echo "== $ok of $want fetches across the racks answered; removing pods, network, agents, BIRD, etcd and the namespaces"
