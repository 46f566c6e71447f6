#!/usr/bin/env bash
# make demo-sandbox: the network part of a pod without a container runtime: sandboxes on a bridge
# network. Sandbox "web" runs an HTTP server and a sidecar that fetches from it over 127.0.0.1 (two
# processes sharing one sandbox); sandbox "client" fetches from web's IP. (make demo does the same
# with real pods on containerd.)
# Everything runs inside a demo "host" network namespace that this script creates and removes, so the
# machine's own network is untouched. On a real host, drop the nsenter prefix (and the demo netns).
#
#   KEEP=1 make demo-sandbox   leaves everything running and prints how to clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

need() { command -v "$1" >/dev/null 2>&1; }
if ! need busybox || ! need nsenter || ! need unshare; then
	echo "== installing busybox-static, util-linux"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static util-linux >/dev/null
fi
make -s build

D=$(mktemp -d /tmp/netmgr-demo.XXXXXX)
HOSTNS=$D/hostns
touch "$HOSTNS"
unshare --net="$HOSTNS" true
podctl() { nsenter --net="$HOSTNS" ./bin/podctl --state-dir "$D/state" --run-dir "$D/run" "$@"; }
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	podctl sandbox rm web-sidecar client web >/dev/null 2>&1 || true
	podctl network rm demo >/dev/null 2>&1 || true
	umount "$HOSTNS" 2>/dev/null || true
	for p in "$D"/run/netns/*; do [ -e "$p" ] && umount "$p" 2>/dev/null; done
	rm -rf "$D"
}
if [ "${KEEP:-}" != 1 ]; then trap cleanup EXIT; fi

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
podctl sandbox exec web -- busybox httpd -f -p 8080 -h "$D/www" &
PIDS+=($!)
for _ in $(seq 50); do podctl sandbox exec web-sidecar -- busybox nc -z 127.0.0.1 8080 2>/dev/null && break; sleep 0.1; done

ok=0
for i in 1 2 3; do
	a=$(podctl sandbox exec web-sidecar -- busybox wget -qO- -T 2 http://127.0.0.1:8080/) && ok=$((ok + 1))
	echo "[$i] web-sidecar -> 127.0.0.1:8080 : $a"
	b=$(podctl sandbox exec client -- busybox wget -qO- -T 2 "http://$WEB_IP:8080/") && ok=$((ok + 1))
	echo "[$i] client      -> $WEB_IP:8080 : $b"
	sleep 1
done
if [ "$ok" != 6 ]; then
	echo "demo: only $ok of 6 fetches succeeded" >&2
	exit 1
fi
echo
if [ "${KEEP:-}" = 1 ]; then
	echo "== left running; state in $D. Clean up with:"
	echo "   kill ${PIDS[*]}; nsenter --net=$HOSTNS ./bin/podctl --state-dir $D/state --run-dir $D/run sandbox rm web-sidecar client web"
	echo "   nsenter --net=$HOSTNS ./bin/podctl --state-dir $D/state --run-dir $D/run network rm demo; umount $HOSTNS; rm -rf $D"
else
	echo "== removing pods, network and the demo namespace"
fi
