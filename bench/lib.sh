# bench/lib.sh — sourced by the bench scripts. It gives each a scratch dir and throwaway network
# namespaces, and removes them on exit, error or interrupt: the root namespace's links, addresses,
# routes, sysctls and firewall are never touched, and nothing is left mounted.
#
#   bench_init TAG          checks root and util-linux, makes WORK (under TMPDIR), installs the cleanup
#   bench_netns PATH        creates a pinned network namespace at PATH with lo up
#   bench_run CMD [ARG...]  runs CMD in the background and waits, so that a signal stops it cleanly
#   die MSG / log MSG       messages prefixed with TAG

bench_init() {
	BENCH_TAG=$1
	[[ $(id -u) -eq 0 ]] || die "needs root: it creates network namespaces (nothing outside them is changed)"
	local tool
	for tool in unshare nsenter mount umount; do
		command -v "$tool" >/dev/null || die "missing $tool (util-linux)"
	done
	WORK=$(mktemp -d -t "netmgr-${BENCH_TAG//\//-}.XXXXXX")
	BENCH_PIDS=()
	trap bench_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

die() { echo "${BENCH_TAG:-bench}: $*" >&2; exit 1; }
log() { echo "${BENCH_TAG:-bench}: $*" >&2; }

bench_netns() {
	touch "$1"
	unshare --net="$1" true
	nsenter --net="$1" ip link set lo up 2>/dev/null || true
}

bench_run() {
	"$@" &
	BENCH_PIDS+=($!)
	wait "$!"
}

bench_cleanup() {
	local rc=$? p m
	trap - EXIT INT TERM
	for p in "${BENCH_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	# Unmount whatever is still mounted under the scratch dir (namespace pins the programs could not
	# remove, and the bench namespaces), deepest first, then delete the dir.
	awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" || echo "$BENCH_TAG: cleanup: could not unmount $m" >&2
	done
	rm -rf "$WORK"
	exit "$rc"
}
