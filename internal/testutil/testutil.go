// Package testutil builds the throwaway namespaces that netmgr's kernel tests run in, and probes
// connectivity between them. Nothing it makes touches the root namespace, and everything is removed
// in t.Cleanup, also when the test fails.
package testutil

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/sandbox"
)

// RequireRoot skips a kernel test (one that creates namespaces, links or rules) under -short, and
// unless the process holds CAP_NET_ADMIN and CAP_SYS_ADMIN in its effective capability set. It asks
// for capabilities, not for uid 0: root in an unprivileged container lacks them, and the test would
// fail instead of skipping. `make unit` (go test -short) therefore runs no kernel test, even as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("kernel test: skipped with -short")
	}
	if missing := MissingCaps(); len(missing) > 0 {
		tb.Skipf("kernel test: needs %s in the effective capability set", strings.Join(missing, " and "))
	}
}

// RequireNetAdmin is RequireRoot under the name of what it checks.
func RequireNetAdmin(tb testing.TB) {
	tb.Helper()
	RequireRoot(tb)
}

// MissingCaps returns the names of the capabilities that kernel tests need (CAP_NET_ADMIN,
// CAP_SYS_ADMIN) and the calling thread's effective set lacks; all of them if it cannot tell.
func MissingCaps() []string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}
	}
	var missing []string
	for _, c := range []struct {
		name string
		bit  uint
	}{{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN}, {"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN}} {
		if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			missing = append(missing, c.name)
		}
	}
	return missing
}

// NewNS creates a pinned namespace under a temporary directory and removes it at cleanup.
func NewNS(tb testing.TB, name string) *sandbox.NetNS {
	tb.Helper()
	RequireRoot(tb)
	dir, err := os.MkdirTemp("", "netmgr-test-ns-")
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(dir, name)
	ns, err := sandbox.Create(p)
	if err != nil {
		os.RemoveAll(dir)
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ns.Close()
		if err := sandbox.Remove(p); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
		os.RemoveAll(dir)
	})
	return ns
}

// Outside is a namespace standing for the world beyond a host: reachable from the host namespace over a
// veth pair, with no route back to any pod subnet (so replies reach pods only through source NAT).
type Outside struct {
	NS      *sandbox.NetNS
	Addr    netip.Addr // the outside's address
	HostIP  netip.Addr // the host's address on the link to it
	HostDev string
}

// NewOutside joins host to a new outside namespace over 192.0.2.0/24 (TEST-NET-1), host .1, outside .2.
func NewOutside(tb testing.TB, host *sandbox.NetNS) *Outside {
	tb.Helper()
	return NewOutsideNet(tb, host, "192.0.2.1/24", "192.0.2.2/24", "up0")
}

// NewOutsideNet is NewOutside with chosen addresses (v4 or v6) and host device name.
func NewOutsideNet(tb testing.TB, host *sandbox.NetNS, hostCIDR, outCIDR, hostDev string) *Outside {
	tb.Helper()
	out := NewNS(tb, "outside")
	hh, err := host.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer hh.Close()
	oh, err := out.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer oh.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostDev}, PeerName: "eth0", PeerNamespace: netlink.NsFd(out.Fd())}
	if err := hh.LinkAdd(veth); err != nil {
		tb.Fatal(err)
	}
	mustAddr := func(h *netlink.Handle, dev, cidr string) {
		l, err := h.LinkByName(dev)
		if err != nil {
			tb.Fatal(err)
		}
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			tb.Fatal(err)
		}
		a.Flags = 0x02 // IFA_F_NODAD
		if err := h.AddrAdd(l, a); err != nil {
			tb.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			tb.Fatal(err)
		}
	}
	mustAddr(hh, hostDev, hostCIDR)
	mustAddr(oh, "eth0", outCIDR)
	hp := netip.MustParsePrefix(hostCIDR)
	op := netip.MustParsePrefix(outCIDR)
	return &Outside{NS: out, Addr: op.Addr(), HostIP: hp.Addr(), HostDev: hostDev}
}

// Listen starts a TCP server in ns at addr that answers each connection with the remote address it
// saw, then closes. It stops at cleanup.
func Listen(tb testing.TB, ns *sandbox.NetNS, addr string) string {
	tb.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintln(c, host)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// ProbeDeadline bounds the retries of the probes that must succeed (Dial, Ping): on a loaded machine
// the first packets of a new path can be lost to neighbour resolution or IPv6 duplicate address
// detection, or meet a server not yet scheduled, so a probe polls until it succeeds or this much
// time has passed. It is long on purpose: a working path answers in milliseconds, and only a
// broken one waits it out.
const ProbeDeadline = 10 * time.Second

// BlockedWindow is how long DialBlocked and PingBlocked watch a path that must stay closed. A blocked
// probe cannot be retried into success, so it gets one fixed window; pair every such assertion with
// a probe that must succeed (the same source elsewhere, or the same target from elsewhere), so that
// a path broken for every reason does not pass it vacuously.
const BlockedWindow = 2 * time.Second

// Dial connects from ns to addr (a Listen server) and returns the remote address the server saw. It
// retries until a connection answers or ProbeDeadline passes, and then returns the last error.
func Dial(ns *sandbox.NetNS, addr string) (string, error) {
	deadline := time.Now().Add(ProbeDeadline)
	for {
		seen, err := dialOnce(ns, addr, BlockedWindow)
		if err == nil || time.Now().After(deadline) {
			return seen, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DialBlocked tries once, for BlockedWindow, to connect from ns to addr. It returns nil if the
// network gave no connection (dropped, refused, unreachable), and an error if a connection answered
// or the probe itself failed (it could not enter ns), which proves nothing either way.
func DialBlocked(ns *sandbox.NetNS, addr string) error {
	seen, err := dialOnce(ns, addr, BlockedWindow)
	var ne net.Error
	switch {
	case err == nil:
		return fmt.Errorf("dial %s connected (server saw %s), want blocked", addr, seen)
	case errors.As(err, &ne):
		return nil
	}
	return fmt.Errorf("dial %s: %w (not a network error: the probe proves nothing)", addr, err)
}

func dialOnce(ns *sandbox.NetNS, addr string, window time.Duration) (string, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, window)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(window + time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// Ping sends ICMP echo requests from ns to ip with busybox ping, and returns nil on a reply. It
// retries until a reply comes or ProbeDeadline passes.
func Ping(ns *sandbox.NetNS, ip string) error {
	deadline := time.Now().Add(ProbeDeadline)
	for {
		err := pingOnce(ns, ip, BlockedWindow)
		if err == nil || errors.Is(err, exec.ErrNotFound) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// PingBlocked sends one echo request from ns to ip and waits BlockedWindow for a reply. It returns
// nil if the request went out and no reply came, and an error if one did, or if the probe could not
// run (no busybox, the namespace not entered, no route to send it by): such a probe proves nothing.
func PingBlocked(ns *sandbox.NetNS, ip string) error {
	err := pingOnce(ns, ip, BlockedWindow)
	if err == nil {
		return fmt.Errorf("ping %s answered, want blocked", ip)
	}
	if strings.Contains(err.Error(), " 0 packets received") {
		return nil
	}
	return fmt.Errorf("%w (the probe did not run: it proves nothing)", err)
}

func pingOnce(ns *sandbox.NetNS, ip string, window time.Duration) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("ping needs busybox (apt-get install busybox-static): %w", err)
	}
	var out []byte
	err = ns.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), window+5*time.Second)
		defer cancel()
		var err error
		secs := strconv.Itoa(max(1, int(window/time.Second)))
		out, err = exec.CommandContext(ctx, bb, "ping", "-c", "1", "-W", secs, ip).CombinedOutput()
		return err
	})
	if err != nil {
		return fmt.Errorf("ping %s: %v: %s", ip, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Open opens a sandbox namespace by path for probing, closed at cleanup.
func Open(tb testing.TB, path string) *sandbox.NetNS {
	tb.Helper()
	ns, err := sandbox.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Close() })
	return ns
}

// WaitNoLinks polls until ns has no link whose name starts with prefix; the kernel tears down the veths
// of destroyed namespaces asynchronously. It fails the test after 10 s.
func WaitNoLinks(tb testing.TB, ns *sandbox.NetNS, prefix string) {
	tb.Helper()
	h, err := ns.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	var left []string
	for i := 0; i < 200; i++ {
		left = left[:0]
		links, _ := h.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, prefix) {
				left = append(left, l.Attrs().Name)
			}
		}
		if len(left) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatalf("links left behind: %v", left)
}

// HasLink reports whether ns has a link named name.
func HasLink(tb testing.TB, ns *sandbox.NetNS, name string) bool {
	tb.Helper()
	h, err := ns.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	_, err = h.LinkByName(name)
	return err == nil
}
