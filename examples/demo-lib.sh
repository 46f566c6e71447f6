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
