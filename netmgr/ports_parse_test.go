package netmgr_test

import (
	"errors"
	"testing"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/portmap"
)

// TestParsePublishErrors: netmgr.ParsePublish, the API podctl and netmgr-cni call, keeps its contract
// now that its rules live in portmap: errors match netmgr.ErrInvalid with the same one-line message,
// and a PortMapping is a portmap.Mapping.
func TestParsePublishErrors(t *testing.T) {
	_, err := netmgr.ParsePublish("80")
	if !errors.Is(err, netmgr.ErrInvalid) || !errors.Is(err, portmap.ErrInvalid) || errors.Is(err, netmgr.ErrExists) {
		t.Fatalf("ParsePublish(\"80\") = %v, want ErrInvalid", err)
	}
	if want := `invalid argument: port mapping "80": want [HOSTIP:]HOSTPORT:PORT[/tcp|udp]`; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	pm, err := netmgr.ParsePublish("8080:80/udp")
	if err != nil || len(pm) != 1 {
		t.Fatal(pm, err)
	}
	var m portmap.Mapping = pm[0]
	if m.Protocol != netmgr.ProtoUDP || m.String() != "8080:80/udp" {
		t.Errorf("mapping %+v", m)
	}
}
