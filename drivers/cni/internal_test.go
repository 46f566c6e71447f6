package cni

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/netmgr/netmgr/drivers"
)

func TestCNIDriverLoadList(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "10-one.conf")
	if err := os.WriteFile(conf, []byte(`{"cniVersion": "1.0.0", "name": "one", "type": "bridge", "bridge": "x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := loadList(&drivers.Network{Options: map[string]string{OptConfList: conf}})
	if err != nil {
		t.Fatal(err)
	}
	if list.Name != "one" || list.CNIVersion != "1.0.0" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "bridge" {
		t.Errorf("a single-plugin .conf became %+v", list)
	}
	for _, bad := range []string{"relative.conflist", filepath.Join(dir, "missing.conflist")} {
		if _, err := loadList(&drivers.Network{Options: map[string]string{OptConfList: bad}}); err == nil {
			t.Errorf("%s loaded", bad)
		}
	}
}

func TestCNIDriverFromResult(t *testing.T) {
	ipn := func(s string) net.IPNet {
		ip, n, _ := net.ParseCIDR(s)
		n.IP = ip
		return *n
	}
	r := &types100.Result{
		Interfaces: []*types100.Interface{{Name: "cni0"}, {Name: "veth1"}, {Name: "eth0", Mac: "02:00:00:00:00:01", Sandbox: "/ns"}},
		IPs: []*types100.IPConfig{
			{Interface: types100.Int(2), Address: ipn("10.0.0.5/24"), Gateway: net.ParseIP("10.0.0.1")},
			{Interface: types100.Int(2), Address: ipn("fd00::5/64")},
			{Interface: types100.Int(0), Address: ipn("10.0.0.1/24")}, // the bridge's: not ours
		},
		Routes: []*types.Route{{Dst: ipn("0.0.0.0/0")}, {Dst: ipn("::/0"), GW: net.ParseIP("fd00::1")}, {Dst: ipn("10.9.0.0/16"), GW: net.ParseIP("10.0.0.9")}},
	}
	addrs, gws, mac := fromResult(r, "eth0", "/ns")
	if len(addrs) != 2 || addrs[0] != netip.MustParsePrefix("10.0.0.5/24") || addrs[1] != netip.MustParsePrefix("fd00::5/64") {
		t.Errorf("addrs %v", addrs)
	}
	if len(gws) != 2 || gws[0] != netip.MustParseAddr("10.0.0.1") || gws[1] != netip.MustParseAddr("fd00::1") {
		t.Errorf("gateways %v: want the default routes' (10.0.0.1 from the IP config)", gws)
	}
	if mac != "02:00:00:00:00:01" {
		t.Errorf("mac %q", mac)
	}
}
