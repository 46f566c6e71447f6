package testutil

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/sandbox"
)

// Transfer sends size bytes over one TCP connection from namespace from to a sink it starts in to at
// to:port, and returns how many bytes the sink read and the sender's MSS (-1 if unknown): a path whose
// MTU is wrong stalls here instead of passing. The connect is retried until ProbeDeadline.
func Transfer(tb testing.TB, from, to *sandbox.NetNS, dst netip.Addr, port uint16, size int) (int64, int) {
	tb.Helper()
	addr := netip.AddrPortFrom(dst, port).String()
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(60 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	var c net.Conn
	deadline := time.Now().Add(ProbeDeadline)
	for {
		err := from.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", addr, 2*time.Second)
			return err
		})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("connect to %s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(make([]byte, size)); err != nil {
		tb.Fatalf("write %d bytes to %s: %v (an MTU blackhole stalls here)", size, addr, err)
	}
	mss := -1
	if raw, err := c.(*net.TCPConn).SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) { mss, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) })
	}
	c.Close()
	select {
	case n := <-got:
		return n, mss
	case <-time.After(60 * time.Second):
		tb.Fatal("the sink never finished reading")
	}
	return 0, 0
}
