# Helpers the cluster demos share (sourced by demo-cluster.sh and demo-bgp.sh). D is the demo's
# scratch directory; each "host" is a network namespace pinned at $D/NAME.ns.

# on D NAME CMD...: runs CMD inside NAME's namespace.
on() {
	local d=$1 h=$2
	shift 2
	nsenter --net="$d/$h.ns" "$@"
}

# bg CMD...: runs CMD in a session of its own, its process group recorded in $D/pgids (cleanup
# signals the groups).
bg() {
	setsid "$@" &
	echo $! >>"$D/pgids"
	disown # no "Killed" line from the shell when cleanup ends it
}

# newns D NAME: a namespace pinned at $D/NAME.ns, its loopback up.
newns() {
	touch "$1/$2.ns"
	unshare --net="$1/$2.ns" true
	on "$1" "$2" ip link set lo up
}

# killall_groups D SIG: signals every recorded process group (last started first).
killall_groups() {
	[ -f "$1/pgids" ] || return 0
	tac "$1/pgids" | while read -r p; do kill "-$2" -- "-$p" 2>/dev/null || true; done
}

# unmount_under D: unmounts every mount below D (namespace pins), deepest first.
unmount_under() {
	awk -v w="$1/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "demo: could not unmount $m" >&2
	done
}

# The demos' podctl: STORE (set by the demo) is the cluster's etcd:// URL, each host its own
# state and run dirs under D.
# podctl_on D HOST ARGS...: one podctl command on HOST.
podctl_on() {
	local d=$1 h=$2
	shift 2
	on "$d" "$h" ./bin/podctl --store "$STORE" --node "$h" --state-dir "$d/$h/state" --run-dir "$d/$h/run" "$@"
}

# bg_podctl D HOST ARGS...: a long-running podctl command on HOST (an agent, a server), as bg does.
bg_podctl() {
	local d=$1 h=$2
	shift 2
	bg nsenter --net="$d/$h.ns" ./bin/podctl --store "$STORE" --node "$h" --state-dir "$d/$h/state" --run-dir "$d/$h/run" "$@"
}

# start_etcd D HOST IP: a private single-member etcd on HOST at IP:2379, waited for.
start_etcd() {
	local d=$1 h=$2 ip=$3
	bg nsenter --net="$d/$h.ns" ./bin/etcd --name demo --data-dir "$d/etcd" --unsafe-no-fsync \
		--listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
		--listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
		--initial-cluster "demo=http://$ip:2380" --log-level warn --log-outputs stderr 2>"$d/etcd.log"
	for _ in $(seq 100); do
		podctl_on "$d" "$h" node ls >/dev/null 2>&1 && break
		sleep 0.1
	done
}

# web_pod D HOST [sandbox create flags...]: sandbox web on network pods, serving "hello from the pod
# on HOST (IP)" on port 8080 (busybox httpd); its address goes into the demo's IP[HOST].
web_pod() {
	local d=$1 h=$2
	shift 2
	podctl_on "$d" "$h" sandbox create web --network pods "$@" >/dev/null
	IP[$h]=$(podctl_on "$d" "$h" -o json sandbox inspect web | sed -n 's/.*"ipv4": *"\([0-9.]*\)\/.*/\1/p' | head -1)
	mkdir -p "$d/www/$h"
	echo "hello from the pod on $h (${IP[$h]})" >"$d/www/$h/index.html"
	bg_podctl "$d" "$h" sandbox exec web -- busybox httpd -f -p 8080 -h "$d/www/$h"
	for _ in $(seq 50); do fetch "$d" "$h" "http://127.0.0.1:8080/" >/dev/null && break; sleep 0.1; done
}

# fetch D HOST URL: the body, fetched from the web pod on HOST.
fetch() { podctl_on "$1" "$2" sandbox exec web -- timeout 3 busybox wget -qO- "$3" 2>/dev/null; }

# fetch_mesh D ROUNDS HOSTS...: every web pod fetches from every other one by pod IP, ROUNDS times,
# printing each answer; sets ok and want.
fetch_mesh() {
	local d=$1 rounds=$2 round from to a
	shift 2
	ok=0 want=0
	for round in $(seq "$rounds"); do
		for from in "$@"; do
			for to in "$@"; do
				[ "$from" = "$to" ] && continue
				want=$((want + 1))
				a=
				for _ in $(seq 20); do a=$(fetch "$d" "$from" "http://${IP[$to]}:8080/") && break; sleep 0.2; done
				if [ -n "$a" ]; then
					ok=$((ok + 1))
					echo "[$round] pod on $from -> ${IP[$to]} (on $to): $a"
				else
					echo "[$round] pod on $from -> ${IP[$to]} (on $to): FAILED"
				fi
			done
		done
	done
}
