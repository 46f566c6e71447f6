package netmgr_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/netmgr/netmgr/internal/testutil"
	"github.com/netmgr/netmgr/netmgr"
)

// The first IPv6 connection from outside to a sandbox that has sent nothing yet, right after its
// bridge network was created, gets through: the bridge's link-local address must not be tentative
// (duplicate address detection), or the host solicits the sandbox's address from ::, which the
// sandbox takes for another host's DAD probe and never answers.
func TestFirstIPv6ConnectionAfterCreate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	out6 := testutil.NewOutsideNet(t, e.host, "2001:db8::1/64", "2001:db8::2/64", "up6")
	e.network(t, "ds", "10.51.0.0/24", func(s *netmgr.NetworkSpec) {
		s.Subnets = append(s.Subnets, netip.MustParsePrefix("fd00:51::/64"))
	})
	a, err := e.m.CreateSandbox(ctx, netmgr.SandboxSpec{Name: "a", Networks: []netmgr.AttachSpec{{Network: "ds"}}, Publish: publish(t, "8080:80")})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Listen(t, testutil.Open(t, a.NetNS), ":80")
	// One attempt, shorter than DAD takes (about a second and a half here), no retry.
	var c net.Conn
	err = out6.NS.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", "[2001:db8::1]:8080", 1500*time.Millisecond)
		return err
	})
	if err != nil {
		t.Fatalf("first IPv6 connection to a published port: %v", err)
	}
	c.Close()
}
