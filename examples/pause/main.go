// Command pause is the infra process of a netmgr sandbox. netmgr starts it inside the sandbox's network
// namespace, in new UTS and IPC namespaces, so that they live as long as it does. It sets the hostname
// if asked, adopts and reaps orphaned processes as a child subreaper, exits 0 on SIGTERM or SIGINT, and
// otherwise sleeps.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

func main() {
	hostname := flag.String("hostname", "", "set the hostname of the process's own UTS namespace")
	flag.Parse()
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected argument %q", flag.Arg(0)))
	}
	// Subscribe first: to SIGCHLD before becoming a subreaper, so that no orphan's exit is missed, and
	// to SIGTERM before the hostname is visible, so that whoever waits for it can stop us cleanly.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGCHLD)
	if *hostname != "" {
		if err := unix.Sethostname([]byte(*hostname)); err != nil {
			fail(fmt.Errorf("set hostname: %w", err))
		}
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fail(fmt.Errorf("become child subreaper: %w", err))
	}
	reap()
	for s := range sigs {
		if s != unix.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child; signals coalesce, so one SIGCHLD may stand for many.
func reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "pause: %v\n", err)
	os.Exit(1)
}
