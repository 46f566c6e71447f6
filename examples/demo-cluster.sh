#!/usr/bin/env bash
# make demo-cluster: pod networking across hosts. Three "hosts" (network namespaces, each with one
# underlay interface on a shared segment, 198.18.0.0/24), a private etcd on host1, a node agent per
# host (podctl agent), one overlay (VXLAN) network with cluster CIDR 10.244.0.0/16, and a pod on each
# host: a sandbox running busybox httpd, and a client in it fetching from the pods on the other hosts by
# pod IP. It prints the nodes, their subnets, the pods and the answers as they arrive, then removes
# everything and exits 0.
#
# On real machines: run one etcd (or use yours), then on every machine
#   podctl --store etcd://ETCD:2379 agent --underlay THIS_MACHINES_IP &
# once, anywhere:
#   podctl --store etcd://ETCD:2379 network create pods --driver overlay --subnet 10.244.0.0/16
# and on any machine:
#   podctl --store etcd://ETCD:2379 sandbox create web --network pods
#
#   bash examples/demo-cluster.sh [--keep]      leaves it running (remove with --clean DIR)
#   bash examples/demo-cluster.sh --clean DIR
set -Eeuo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

KEEP=${KEEP:-0}
CLEAN=
while [ $# -gt 0 ]; do
	case "$1" in
	--keep) KEEP=1 ;;
	--clean) CLEAN=$2; shift ;;
	*) echo "usage: $0 [--keep] | --clean DIR" >&2; exit 2 ;;
	esac
	shift
done
if [ "$(id -u)" != 0 ]; then
	echo "demo-cluster: needs root (network namespaces)" >&2
	exit 1
fi
HOSTS="host1 host2 host3"
ETCD_EP=198.18.0.1:2379
STORE="etcd://$ETCD_EP?prefix=/demo/"

. examples/demo-lib.sh # on, bg, newns, podctl_on, bg_podctl, start_etcd, web_pod, fetch, fetch_mesh, ...

# cleanup D: every step tolerates what is already gone.
cleanup() {
	set +e
	local d=$1 p h
	[ -n "$d" ] && [ -d "$d" ] || return 0
	if [ -f "$d/pgids" ]; then
		# Clients and servers first, agents last (SIGTERM: an agent leaves the data path as it is).
		killall_groups "$d" TERM
		sleep 0.3
	fi
	for h in $HOSTS; do
		[ -e "$d/$h.ns" ] || continue
		if [ -n "$(pgrep -f "$d/www" 2>/dev/null)" ]; then pkill -KILL -f "$d/www" 2>/dev/null; fi
		podctl_on "$d" "$h" sandbox rm web >/dev/null 2>&1
	done
	# The network's record is in etcd; deleting it there makes nothing more on the hosts, whose
	# namespaces go below with every link in them.
	podctl_on "$d" host1 network rm pods >/dev/null 2>&1
	killall_groups "$d" KILL
	unmount_under "$d"
	rm -rf "$d"
}
if [ -n "$CLEAN" ]; then
	cleanup "$CLEAN"
	echo "== removed the demo in $CLEAN"
	exit 0
fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need busybox || ! need nsenter || ! need unshare || ! need setsid || ! need timeout || ! need pgrep; then
	echo "== installing busybox-static, util-linux, coreutils, procps"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static util-linux coreutils procps >/dev/null
fi
make -s build etcd

D=$(mktemp -d /tmp/netmgr-cluster.XXXXXX)
on_exit() {
	local rc=$?
	trap - ERR
	trap '' INT TERM
	if [ "$rc" != 0 ]; then
		for f in "$D"/*.log; do [ -s "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }; done >&2
	fi
	cleanup "$D"
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "demo-cluster: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

# The underlay: a bridge in a namespace of its own, and one veth per host.
touch "$D/underlay.ns"
unshare --net="$D/underlay.ns" true
on "$D" underlay ip link add ul0 type bridge
on "$D" underlay ip link set ul0 up
i=0
for h in $HOSTS; do
	i=$((i + 1))
	mkdir -p "$D/$h"
	touch "$D/$h.ns"
	unshare --net="$D/$h.ns" true
	on "$D" underlay ip link add "ul-$h" type veth peer name eth0 netns "$D/$h.ns"
	on "$D" underlay ip link set "ul-$h" master ul0 up
	on "$D" "$h" ip addr add "198.18.0.$i/24" dev eth0
	on "$D" "$h" ip link set eth0 up
	on "$D" "$h" ip link set lo up
done
echo "== underlay 198.18.0.0/24: host1 .1, host2 .2, host3 .3; etcd on $ETCD_EP"

start_etcd "$D" host1 198.18.0.1

i=0
for h in $HOSTS; do
	i=$((i + 1))
	bg_podctl "$D" "$h" agent --underlay "198.18.0.$i" --ttl 5s 2>"$D/agent-$h.log"
done
podctl_on "$D" host1 network create pods --driver overlay --subnet 10.244.0.0/16
# Wait until every agent carries the network (its node record lists a subnet of it).
for _ in $(seq 100); do
	[ "$(podctl_on "$D" host1 -o json node ls | grep -c '"10\.244\.')" -ge 3 ] && break
	sleep 0.1
done
echo
podctl_on "$D" host1 node ls
echo
podctl_on "$D" host1 network ls

declare -A IP
for h in $HOSTS; do
	# The pods on host1 and host2 back the service below; host3's does not.
	label=()
	[ "$h" != host3 ] && label=(--label app=web)
	web_pod "$D" "$h" "${label[@]}"
done
echo
for h in $HOSTS; do echo "== pod web on $h: ${IP[$h]}"; done
# shellcheck disable=SC2086
fetch_mesh "$D" 2 $HOSTS
if [ "$ok" != "$want" ]; then
	echo "demo-cluster: only $ok of $want fetches across hosts succeeded" >&2
	exit 1
fi

# A service: the pods on host1 and host2 behind a NodePort service (the agents program it); the pod
# on host3 uses the cluster IP, and an outside namespace on the underlay asks host3, which runs no
# backend, at the node port.
echo
podctl_on "$D" host1 service create web --selector app=web --port 80:8080 --type NodePort --node-port 30080 >/dev/null
for _ in $(seq 100); do
	[ "$(podctl_on "$D" host1 -o json service inspect web | grep -c '"sandbox"')" -ge 2 ] && break
	sleep 0.1
done
podctl_on "$D" host1 service ls
CIP=$(podctl_on "$D" host1 -o json service inspect web | sed -n 's/.*"cluster_ip": *"\([0-9.]*\)".*/\1/p' | head -1)
touch "$D/outside.ns"
unshare --net="$D/outside.ns" true
on "$D" underlay ip link add ul-outside type veth peer name eth0 netns "$D/outside.ns"
on "$D" underlay ip link set ul-outside master ul0 up
on "$D" outside ip addr add 198.18.0.200/24 dev eth0
on "$D" outside ip link set eth0 up
sok=0 swant=0
for i in 1 2 3 4 5 6; do
	swant=$((swant + 1))
	a=
	for _ in $(seq 30); do a=$(fetch "$D" host3 "http://$CIP/") && break; sleep 0.1; done
	if [ -n "$a" ]; then
		sok=$((sok + 1))
		echo "[$i] pod on host3 -> cluster IP $CIP: $a"
	else
		echo "[$i] pod on host3 -> cluster IP $CIP: FAILED"
	fi
done
for i in 1 2 3; do
	swant=$((swant + 1))
	a=
	for _ in $(seq 30); do a=$(on "$D" outside timeout 3 busybox wget -qO- http://198.18.0.3:30080/ 2>/dev/null) && break; sleep 0.1; done
	if [ -n "$a" ]; then
		sok=$((sok + 1))
		echo "[$i] outside 198.18.0.200 -> node port 198.18.0.3:30080 (host3, no backend there): $a"
	else
		echo "[$i] outside 198.18.0.200 -> node port 198.18.0.3:30080 (host3): FAILED"
	fi
done
if [ "$sok" != "$swant" ]; then
	echo "demo-cluster: only $sok of $swant requests to the service succeeded" >&2
	exit 1
fi
echo
if [ "$KEEP" = 1 ]; then
	trap - EXIT
	echo "== left running in $D; look around with e.g."
	echo "   nsenter --net=$D/host1.ns ./bin/podctl --store 'etcd://$ETCD_EP?prefix=/demo/' --node host1 --state-dir $D/host1/state --run-dir $D/host1/run node ls"
	echo "   remove it all with: bash examples/demo-cluster.sh --clean $D"
else
	echo "== $ok of $want fetches across hosts and $sok of $swant requests to the service answered; removing pods, service, network, agents, etcd and the namespaces"
fi
