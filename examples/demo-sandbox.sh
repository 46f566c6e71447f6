#!/usr/bin/env bash
# make demo-sandbox: the network part of a pod without a container runtime: sandboxes on a bridge
# network. Sandbox "web" runs an HTTP server and a sidecar that fetches from it over 127.0.0.1 (two
# processes sharing one sandbox); sandbox "client" fetches from web's IP. (make demo does the same
# with real pods on containerd.)
# Everything runs inside a demo "host" network namespace that this script creates and removes, so the
# machine's own network is untouched. On a real host, drop the nsenter prefix (and the demo netns).
#
#   bash examples/demo-sandbox.sh [--keep]      (or KEEP=1 make demo-sandbox) leaves it running
#   bash examples/demo-sandbox.sh --clean DIR   removes what a --keep run left in DIR
#
# Whatever way it ends (success, a failed step, Ctrl-C, SIGTERM), it stops the processes it started,
# removes the sandboxes and the network, unmounts the namespaces and deletes its temporary directory;
# only a successful --keep run leaves them.
set -Eeuo pipefail # -E: the ERR trap below also reports failures inside functions
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
	echo "demo-sandbox: needs root (network namespaces)" >&2
	exit 1
fi

podctl_in() {
	local d=$1
	shift
	nsenter --net="$d/hostns" ./bin/podctl --state-dir "$d/state" --run-dir "$d/run" "$@"
}

# netns_procs D: the processes inside the demo's namespaces (the host namespace and every sandbox's).
netns_procs() {
	local d=$1 f ino want=() p
	for f in "$d/hostns" "$d"/run/netns/*; do
		[ -e "$f" ] || continue
		ino=$(stat -L -c %i "$f" 2>/dev/null) || continue
		want+=("net:[$ino]")
	done
	[ ${#want[@]} -gt 0 ] || return 0
	for p in /proc/[0-9]*; do
		local ns
		ns=$(readlink "$p/ns/net" 2>/dev/null) || continue
		for w in "${want[@]}"; do
			[ "$ns" = "$w" ] && echo "${p#/proc/}"
		done
	done
}

# cleanup D removes everything the demo made under D; each step tolerates what is already gone.
cleanup() {
	set +e # every step runs, whatever failed before
	local d=$1 p pids
	[ -n "$d" ] && [ -d "$d" ] || return 0
	# The process groups the demo started in the background (podctl exec and what it runs).
	if [ -f "$d/pgids" ]; then
		while read -r p; do kill -TERM -- "-$p" 2>/dev/null || true; done <"$d/pgids"
	fi
	podctl_in "$d" sandbox rm web-sidecar client web >/dev/null 2>&1 || true
	podctl_in "$d" network rm demo >/dev/null 2>&1 || true
	# Anything still inside the demo's namespaces (also what a killed run could not stop).
	for _ in 1 2 3; do
		pids=$(netns_procs "$d")
		[ -n "$pids" ] || break
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
		sleep 0.2
	done
	awk -v w="$d/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "demo-sandbox: could not unmount $m" >&2
	done
	rm -rf "$d"
}
if [ -n "$CLEAN" ]; then
	cleanup "$CLEAN"
	echo "== removed the demo in $CLEAN"
	exit 0
fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need busybox || ! need nsenter || ! need unshare || ! need setsid || ! need timeout; then
	echo "== installing busybox-static, util-linux, coreutils"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static util-linux coreutils >/dev/null
fi
make -s build

D=$(mktemp -d /tmp/netmgr-demo.XXXXXX)
on_exit() {
	local rc=$?
	trap - ERR
	trap '' INT TERM # a second Ctrl-C must not stop the cleanup half-way
	cleanup "$D"
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "demo-sandbox: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HOSTNS=$D/hostns
touch "$HOSTNS"
unshare --net="$HOSTNS" true
podctl() { podctl_in "$D" "$@"; }
# bg CMD...: runs CMD in the background in a process group of its own (setsid execs it in place, so
# $! is the group), recorded for cleanup.
bg() {
	setsid "$@" &
	echo $! >>"$D/pgids"
}

echo "== demo host namespace: $HOSTNS"
podctl network create demo --driver bridge --subnet 10.88.0.0/24
podctl sandbox create web --network demo --pause --label app=web
podctl sandbox create web-sidecar --join web
podctl sandbox create client --network demo
echo
podctl sandbox ls
WEB_IP=$(podctl -o json sandbox inspect web | sed -n 's/.*"ipv4": *"\([0-9.]*\)\/.*/\1/p' | head -1)
CLIENT_IP=$(podctl -o json sandbox inspect client | sed -n 's/.*"ipv4": *"\([0-9.]*\)\/.*/\1/p' | head -1)
echo
echo "== web pod: $WEB_IP   client pod: $CLIENT_IP"

mkdir -p "$D/www"
echo "hello from the web pod ($WEB_IP)" >"$D/www/index.html"
bg nsenter --net="$HOSTNS" ./bin/podctl --state-dir "$D/state" --run-dir "$D/run" sandbox exec web -- busybox httpd -f -p 8080 -h "$D/www"

# fetch SANDBOX URL: one HTTP GET from inside the sandbox. Not busybox wget -T: Debian 12's static
# busybox (1.35) crashes with it; timeout(1) bounds the fetch instead.
fetch() { podctl sandbox exec "$1" -- timeout 3 busybox wget -qO- "$2" 2>/dev/null; }
for _ in $(seq 50); do fetch web-sidecar http://127.0.0.1:8080/ >/dev/null && break; sleep 0.1; done

ok=0
for i in 1 2 3; do
	a=$(fetch web-sidecar http://127.0.0.1:8080/) && ok=$((ok + 1))
	echo "[$i] web-sidecar -> 127.0.0.1:8080 : $a"
	b=$(fetch client "http://$WEB_IP:8080/") && ok=$((ok + 1))
	echo "[$i] client      -> $WEB_IP:8080 : $b"
	sleep 1
done
if [ "$ok" != 6 ]; then
	echo "demo-sandbox: only $ok of 6 fetches succeeded" >&2
	exit 1
fi
echo
if [ "$KEEP" = 1 ]; then
	trap - EXIT
	echo "== left running; state in $D. Look around with:"
	echo "   nsenter --net=$HOSTNS ./bin/podctl --state-dir $D/state --run-dir $D/run sandbox ls"
	echo "   remove it all with: bash examples/demo-sandbox.sh --clean $D"
else
	echo "== removing pods, network and the demo namespace"
fi
