#!/usr/bin/env bash
# make demo: two pods on containerd, networked by netmgr.
#
# Pod "web" has two containers: a busybox httpd on port 8080 and a sidecar that fetches from it over
# 127.0.0.1 every second (they share the pod's network namespace). Pod "client" fetches from web's pod
# IP every second. The script prints the pods, their IPs and the responses as they arrive, then removes
# everything and exits 0 — or, with --keep (or KEEP=1), leaves it all running and prints how to remove
# it later.
#
# What it needs it installs (runc, busybox-static, iproute2, util-linux, with apt-get) or builds
# (podctl, pause, and containerd from the version go.mod pins). It starts a containerd of its own on a
# private socket with its root under a temporary directory, never the machine's containerd. The pods'
# "host" is a demo network namespace this script creates, so the machine's own network is untouched;
# containerd itself runs in the root namespace (runc needs the real cgroup mounts) and starts the
# containers in the pods' namespaces by path. On a real host, drop the nsenter prefix.
#
#   bash examples/demo.sh [--keep] [--seconds N]     bash examples/demo.sh --clean DIR
set -Eeuo pipefail # -E: the ERR trap below also reports failures inside functions
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

KEEP=${KEEP:-0}
SECS=${DEMO_SECONDS:-5}
CLEAN=
while [ $# -gt 0 ]; do
	case "$1" in
	--keep) KEEP=1 ;;
	--seconds) SECS=$2; shift ;;
	--clean) CLEAN=$2; shift ;;
	*) echo "usage: $0 [--keep] [--seconds N] | --clean DIR" >&2; exit 2 ;;
	esac
	shift
done
if [ "$(id -u)" != 0 ]; then
	echo "demo: needs root (network namespaces, containerd)" >&2
	exit 1
fi
NS=netmgr-demo # the containerd namespace of the demo's containers

# netns_procs D: the processes inside the demo's namespaces (its host namespace and the pods').
netns_procs() {
	local d=$1 f ino want=() p ns w
	for f in "$d/hostns" "$d"/run/netns/*; do
		[ -e "$f" ] || continue
		ino=$(stat -L -c %i "$f" 2>/dev/null) || continue
		want+=("net:[$ino]")
	done
	[ ${#want[@]} -gt 0 ] || return 0
	for p in /proc/[0-9]*; do
		ns=$(readlink "$p/ns/net" 2>/dev/null) || continue
		for w in "${want[@]}"; do
			[ "$ns" = "$w" ] && echo "${p#/proc/}"
		done
	done
}

# cleanup removes everything the demo made under its directory $1; each step tolerates what is gone.
cleanup() {
	set +e # every step runs, whatever failed before
	local d=$1 pids
	if [ -f "$d.created-run-containerd" ] && [ ! -d "$d" ]; then
		rmdir /run/containerd/s /run/containerd/runc /run/containerd 2>/dev/null
		rm -f "$d.created-run-containerd"
	fi
	[ -n "$d" ] && [ -d "$d" ] || return 0
	# The process groups the demo started in the background (the log followers).
	if [ -f "$d/pgids" ]; then
		while read -r p; do kill -TERM -- "-$p" 2>/dev/null || true; done <"$d/pgids"
	fi
	podctl_in "$d" pod --containerd-namespace "$NS" rm web client >/dev/null 2>&1 || true
	podctl_in "$d" network rm demo >/dev/null 2>&1 || true
	# The demo's image registry (in the demo namespace; the sweep below would find it too).
	if [ -f "$d/registry.pid" ]; then
		local rpid
		rpid=$(cat "$d/registry.pid")
		if grep -qs "$d/registry/config.yml" "/proc/$rpid/cmdline"; then
			kill "$rpid" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done
		fi
	fi
	if [ -f "$d/containerd.pid" ]; then
		local pid
		pid=$(cat "$d/containerd.pid")
		if grep -qs "$d/config.toml" "/proc/$pid/cmdline"; then
			kill "$pid" 2>/dev/null || true
			for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		fi
	fi
	# Shims of this containerd (their command line names its socket) and their containers.
	local p
	for p in $(grep -ls -- "$d/containerd.sock" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
		pkill -KILL -P "$p" 2>/dev/null || true
		kill -KILL "$p" 2>/dev/null || true
	done
	# Anything still inside the demo's namespaces (also what a killed run could not stop).
	for _ in 1 2 3; do
		pids=$(netns_procs "$d")
		[ -n "$pids" ] || break
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
		sleep 0.2
	done
	awk -v w="$d/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "demo: could not unmount $m" >&2
	done
	rm -rf "$d"
	# Empty directories runc and containerd leave per namespace (never the machine's containerd's files).
	rmdir /sys/fs/cgroup/*/"$NS" /sys/fs/cgroup/"$NS" "/run/containerd/runc/$NS" 2>/dev/null || true
	if [ -f "$d.created-run-containerd" ]; then
		rmdir /run/containerd/s /run/containerd/runc /run/containerd 2>/dev/null || true
		rm -f "$d.created-run-containerd"
	fi
}
podctl_in() {
	local d=$1
	shift
	nsenter --net="$d/hostns" ./bin/podctl --state-dir "$d/state" --run-dir "$d/run" --containerd "$d/containerd.sock" "$@"
}
if [ -n "$CLEAN" ]; then
	cleanup "$CLEAN"
	echo "== removed the demo in $CLEAN"
	exit 0
fi

# What a fresh Debian machine lacks.
missing=()
command -v runc >/dev/null || missing+=(runc)
command -v busybox >/dev/null || missing+=(busybox-static)
command -v ip >/dev/null || missing+=(iproute2)
{ command -v nsenter && command -v unshare; } >/dev/null || missing+=(util-linux)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing ${missing[*]}"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "== building podctl, pause and containerd (make build containerd; the first containerd build takes a few minutes)"
make -s build containerd

D=$(mktemp -d /tmp/netmgr-demo.XXXXXX)
[ -e /run/containerd ] || touch "$D.created-run-containerd"
# Whatever way the demo ends (success, a failed step, Ctrl-C, SIGTERM) it removes everything; only a
# successful --keep run leaves it running.
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
trap 'echo "demo: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
podctl() { podctl_in "$D" "$@"; }
pod() { podctl pod --containerd-namespace "$NS" "$@"; }

echo "== starting containerd on $D/containerd.sock"
cat >"$D/config.toml" <<EOF
version = 3
root = "$D/containerd/root"
state = "$D/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
  "io.containerd.internal.v1.opt"]
[grpc]
  address = "$D/containerd.sock"
[ttrpc]
  address = "$D/containerd.sock.ttrpc"
EOF
PATH="$PWD/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" setsid ./bin/containerd --config "$D/config.toml" >"$D/containerd.log" 2>&1 </dev/null &
echo $! >"$D/containerd.pid"
for _ in $(seq 100); do [ -S "$D/containerd.sock" ] && break; sleep 0.1; done
[ -S "$D/containerd.sock" ] || { echo "demo: containerd did not start:" >&2; tail -5 "$D/containerd.log" >&2; exit 1; }

echo "== demo host namespace $D/hostns; busybox root filesystem $D/rootfs"
touch "$D/hostns"
unshare --net="$D/hostns" true
ROOTFS=$D/rootfs
mkdir -p "$ROOTFS"/{bin,etc,proc,sys,dev,tmp,run,www}
cp "$(command -v busybox)" "$ROOTFS/bin/busybox"
for a in $("$ROOTFS/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$ROOTFS/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOTFS/etc/passwd"
echo "root:x:0:" >"$ROOTFS/etc/group"

# Pod client's image comes from a registry: Debian's docker-registry on 127.0.0.1:5000 inside the demo
# namespace (never the root namespace), with a busybox image pushed to it; podctl pulls it from there.
echo "== image registry (docker-registry) on 127.0.0.1:5000 in the demo namespace; pushing busybox:demo"
mkdir -p "$D/registry"
nsenter --net="$D/hostns" ip link set lo up
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: "127.0.0.1:5000"}\n' \
	"$D/registry/data" >"$D/registry/config.yml"
setsid nsenter --net="$D/hostns" /usr/bin/docker-registry serve "$D/registry/config.yml" >"$D/registry.log" 2>&1 </dev/null &
echo $! >"$D/registry.pid"
go build -o "$D/pushimage" ./integration/cmd/pushimage
pushed=
for _ in $(seq 50); do
	if pushed=$("$D/pushimage" -netns "$D/hostns" -registry 127.0.0.1:5000 -ref busybox:demo 2>"$D/push.err"); then break; fi
	pushed=
	sleep 0.2
done
[ -n "$pushed" ] || { echo "demo: could not push to the registry:" >&2; cat "$D/push.err" "$D/registry.log" >&2; exit 1; }

cat >"$D/web.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: httpd
    image: rootfs:$ROOTFS
    command: [sh, -c, 'echo "hello from pod \$(hostname) at \$(ip -4 addr show eth0 | grep -o "inet [0-9.]*" | cut -d" " -f2)" >/www/index.html && exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080}]
  - name: sidecar
    image: rootfs:$ROOTFS
    command: [sh, -c, 'while true; do echo "\$(date +%T) web/sidecar -> 127.0.0.1:8080 : \$(wget -qO- http://127.0.0.1:8080/ 2>&1)"; sleep 1; done']
EOF

echo
podctl network create demo --driver bridge --subnet 10.88.0.0/24 >/dev/null
pod run -f "$D/web.yaml" --network demo >/dev/null
WEB_IP=$(pod -o json inspect web | sed -n 's/.*"ipv4": *"\([0-9.]*\)\/.*/\1/p' | head -1)
cat >"$D/client.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
  - name: fetch
    image: 127.0.0.1:5000/busybox:demo
    imagePullPolicy: IfNotPresent
    env: [{name: WEB, value: "$WEB_IP"}]
    command: [sh, -c, 'while true; do echo "\$(date +%T) client/fetch -> \$WEB:8080 : \$(wget -qO- http://\$WEB:8080/ 2>&1)"; sleep 1; done']
EOF
echo "== pod client from 127.0.0.1:5000/busybox:demo (podctl pod --insecure-registry 127.0.0.1:5000 --progress plain run)"
pod --insecure-registry 127.0.0.1:5000 --progress plain run -f "$D/client.yaml" --network demo >/dev/null
echo "== pods (podctl pod ls)"
pod ls
echo
echo "== responses as they arrive (podctl pod logs -f), for ${SECS}s"
# Started directly (not through the pod function) so that $! is podctl itself: setsid and nsenter exec
# it, in a process group of its own that cleanup stops if the demo is interrupted here.
setsid nsenter --net="$D/hostns" ./bin/podctl --state-dir "$D/state" --run-dir "$D/run" --containerd "$D/containerd.sock" \
	pod --containerd-namespace "$NS" logs -f web sidecar &
F1=$!
echo "$F1" >>"$D/pgids"
setsid nsenter --net="$D/hostns" ./bin/podctl --state-dir "$D/state" --run-dir "$D/run" --containerd "$D/containerd.sock" \
	pod --containerd-namespace "$NS" logs -f client fetch &
F2=$!
echo "$F2" >>"$D/pgids"
sleep "$SECS"
kill "$F1" "$F2" 2>/dev/null || true
wait "$F1" "$F2" 2>/dev/null || true
echo

ok1=$(pod logs web sidecar | grep -c "hello from pod web" || true)
ok2=$(pod logs client fetch | grep -c "hello from pod web" || true)
if [ "$ok1" -lt 1 ] || [ "$ok2" -lt 1 ]; then
	echo "demo: FAILED: $ok1 responses over 127.0.0.1, $ok2 by pod IP" >&2
	exit 1
fi
echo "== $ok1 responses inside pod web over 127.0.0.1, $ok2 from pod client to web's IP $WEB_IP"
if [ "$KEEP" = 1 ]; then
	trap - EXIT
	echo "== left running in $D. Look around with:"
	echo "   nsenter --net=$D/hostns ./bin/podctl --state-dir $D/state --run-dir $D/run --containerd $D/containerd.sock pod --containerd-namespace $NS ls"
	echo "   remove it all with: bash examples/demo.sh --clean $D"
else
	echo "== removing the pods, the network, containerd and the demo namespace"
fi
