# bench/lib.sh — sourced by the bench scripts (which run under set -Eeuo pipefail). It gives each a
# scratch dir and throwaway network namespaces, and removes them on exit, error, SIGINT or SIGTERM
# (processes left in those namespaces included): the root namespace's links, addresses, routes,
# sysctls and firewall are never touched, and nothing is left mounted.
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
	# set -E in the scripts makes this fire inside functions too; the EXIT trap then cleans up.
	trap 'echo "$BENCH_TAG: failed (exit $?) at ${BASH_SOURCE[0]}:$LINENO: $BASH_COMMAND" >&2' ERR
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

# bench_netns_procs: the processes inside the namespaces mounted under WORK (iperf3 servers, pause
# processes, whatever a benchmark program started there and could not stop).
bench_netns_procs() {
	local m ino want=() p ns w
	while read -r m; do
		ino=$(stat -L -c %i "$m" 2>/dev/null) || continue
		want+=("net:[$ino]")
	done < <(awk -v w="$WORK/" 'index($5, w) == 1 && / - nsfs / { print $5 }' /proc/self/mountinfo)
	[[ ${#want[@]} -gt 0 ]] || return 0
	for p in /proc/[0-9]*; do
		ns=$(readlink "$p/ns/net" 2>/dev/null) || continue
		for w in "${want[@]}"; do
			[[ $ns == "$w" ]] && echo "${p#/proc/}"
		done
	done
	return 0
}

bench_cleanup() {
	local rc=$? p m pids
	trap - EXIT ERR
	trap '' INT TERM # a second Ctrl-C must not stop the cleanup half-way
	set +e           # every step runs, whatever failed before
	[[ -n ${WORK:-} && -d $WORK ]] || exit "$rc"
	# The commands bench_run started get SIGTERM (the bench programs and sub-scripts clean up after
	# themselves on it); wait for them, then kill whatever is still inside the bench namespaces.
	for p in "${BENCH_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	for _ in 1 2 3; do
		pids=$(bench_netns_procs)
		[[ -n $pids ]] || break
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
		sleep 0.2
	done
	# Unmount whatever is still mounted under the scratch dir (namespace pins the programs could not
	# remove, and the bench namespaces), deepest first, then delete the dir.
	awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" || echo "$BENCH_TAG: cleanup: could not unmount $m" >&2
	done
	rm -rf "$WORK"
	exit "$rc"
}
