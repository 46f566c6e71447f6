package drivers

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/sandbox"
)

// The host-side plumbing that every driver whose sandboxes sit on a Linux bridge shares (bridge,
// overlay): the veth pair with its host end on the bridge, IP forwarding, no DAD on netmgr's own
// bridges, and the collection of leaked host ends.

// OwnerAliasPrefix starts the interface alias of every network-level device netmgr made (a
// bridge, a VXLAN device): "netmgr:" and the network's ID. Interfaces so marked are netmgr's own;
// EnableForwarding leaves their accept_ra alone.
const OwnerAliasPrefix = "netmgr:"

// OwnerAlias is the interface alias of a network-level device netmgr made for n.
func OwnerAlias(n *Network) string { return OwnerAliasPrefix + n.ID }

// HostIfName derives a host-side veth name from an endpoint ID: prefix and as much of a hash of
// the ID as IFNAMSIZ leaves room for. Each driver has a prefix of its own, which its Collect relies on.
func HostIfName(prefix, endpointID string) string {
	sum := sha256.Sum256([]byte(endpointID))
	return prefix + hex.EncodeToString(sum[:])[:MaxIfNameLen-len(prefix)]
}

// AttachVeth plumbs ep into sb as a veth pair whose host end (ep.HostName) is a port of the bridge
// named bridge in env.Host, hairpin as asked, and configures the sandbox end (ConfigureInterface).
// The pair is created inside sb with its peer placed in the host namespace, so there is no move
// step. An ep.MTU of 0 takes the bridge's MTU. On failure it deletes the pair; on success ep.MAC is
// the sandbox end's MAC.
func AttachVeth(env Env, log *slog.Logger, bridge string, hairpin bool, ep *Endpoint, sb *sandbox.NetNS) (err error) {
	hh := env.HostHandle
	br, err := hh.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("attach %s: bridge %s: %w", ep.Sandbox, bridge, err)
	}
	sh, err := sb.Handle()
	if err != nil {
		return fmt.Errorf("attach %s: %w", ep.Sandbox, err)
	}
	if ep.MTU == 0 {
		ep.MTU = br.Attrs().MTU
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: ep.IfName, MTU: ep.MTU, TxQLen: -1},
		PeerName:      ep.HostName,
		PeerNamespace: netlink.NsFd(env.Host.Fd()),
	}
	if ep.MAC != "" {
		veth.HardwareAddr, _ = net.ParseMAC(ep.MAC)
	}
	if err := sh.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("attach %s: %w: interface %s or %s exists", ep.Sandbox, ErrExists, ep.IfName, ep.HostName)
		}
		return fmt.Errorf("attach %s: create veth %s: %w", ep.Sandbox, ep.IfName, err)
	}
	log.Debug("veth created", "sandbox", ep.Sandbox, "ifname", ep.IfName, "host_ifname", ep.HostName)
	defer func() {
		if err != nil {
			// Deleting one end deletes both; the sandbox side is enough even if the host side moved.
			if l, lerr := sh.LinkByName(ep.IfName); lerr == nil {
				if derr := sh.LinkDel(l); derr != nil {
					log.Warn("rollback: delete veth", "sandbox", ep.Sandbox, "ifname", ep.IfName, "error", derr)
				}
			}
		}
	}()

	host, err := hh.LinkByName(ep.HostName)
	if err != nil {
		return fmt.Errorf("attach %s: find %s: %w", ep.Sandbox, ep.HostName, err)
	}
	if err := hh.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
		if errors.Is(err, unix.EXFULL) {
			return fmt.Errorf("attach %s: %w: bridge %s has reached the kernel's limit of 1024 ports; put further sandboxes on another network", ep.Sandbox, ErrFull, bridge)
		}
		return fmt.Errorf("attach %s: add %s to bridge %s: %w", ep.Sandbox, ep.HostName, bridge, err)
	}
	if hairpin {
		if err := hh.LinkSetHairpin(host, true); err != nil {
			return fmt.Errorf("attach %s: hairpin on %s: %w", ep.Sandbox, ep.HostName, err)
		}
	}
	if err := hh.LinkSetUp(host); err != nil {
		return fmt.Errorf("attach %s: bring up %s: %w", ep.Sandbox, ep.HostName, err)
	}

	link, err := ConfigureInterface(sh, ep)
	if err != nil {
		return err
	}
	ep.MAC = link.Attrs().HardwareAddr.String()
	return nil
}

// RestoreVeth brings back an endpoint that AttachVeth plumbed onto bridge, for an EndpointRestorer,
// and reports whether anything had to change. A host end that is off the bridge (the bridge was
// re-created: a new bridge has no ports) is put back on it and set up. A host end that is gone was
// deleted, and its sandbox end with it (a veth pair lives and dies as one): the pair is made again by
// AttachVeth, with the recorded names, MAC, addresses and routes.
func RestoreVeth(env Env, log *slog.Logger, bridge string, hairpin bool, ep *Endpoint, sb *sandbox.NetNS) (bool, error) {
	if ep.HostName == "" {
		return false, nil
	}
	hh := env.HostHandle
	br, err := hh.LinkByName(bridge)
	if err != nil {
		return false, fmt.Errorf("restore %s: bridge %s: %w", ep.Sandbox, bridge, err)
	}
	host, err := hh.LinkByName(ep.HostName)
	if IsLinkNotFound(err) {
		sh, err := sb.Handle()
		if err != nil {
			return false, fmt.Errorf("restore %s: %w", ep.Sandbox, err)
		}
		if _, err := sh.LinkByName(ep.IfName); err == nil {
			return false, fmt.Errorf("restore %s: %w: %s in the sandbox is not the endpoint's veth (its host end %s is gone); remove it and run gc again",
				ep.Sandbox, ErrExists, ep.IfName, ep.HostName)
		}
		if err := AttachVeth(env, log, bridge, hairpin, ep, sb); err != nil {
			return false, err
		}
		log.Debug("veth re-created", "sandbox", ep.Sandbox, "ifname", ep.IfName, "host_ifname", ep.HostName)
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("restore %s: find %s: %w", ep.Sandbox, ep.HostName, err)
	}
	if host.Type() != "veth" {
		return false, fmt.Errorf("restore %s: %w: %s is a %s, not the endpoint's veth", ep.Sandbox, ErrExists, ep.HostName, host.Type())
	}
	changed := false
	if host.Attrs().MasterIndex != br.Attrs().Index {
		if err := hh.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
			if errors.Is(err, unix.EXFULL) {
				return false, fmt.Errorf("restore %s: %w: bridge %s has reached the kernel's limit of 1024 ports", ep.Sandbox, ErrFull, bridge)
			}
			return false, fmt.Errorf("restore %s: add %s to bridge %s: %w", ep.Sandbox, ep.HostName, bridge, err)
		}
		if hairpin {
			if err := hh.LinkSetHairpin(host, true); err != nil {
				return false, fmt.Errorf("restore %s: hairpin on %s: %w", ep.Sandbox, ep.HostName, err)
			}
		}
		changed = true
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		if err := hh.LinkSetUp(host); err != nil {
			return false, fmt.Errorf("restore %s: bring up %s: %w", ep.Sandbox, ep.HostName, err)
		}
		changed = true
	}
	if changed {
		log.Debug("host end back on its bridge", "sandbox", ep.Sandbox, "host_ifname", ep.HostName, "bridge", bridge)
	}
	return changed, nil
}

// DetachVeth removes the veth pair AttachVeth made. When the namespace is going, the veth dies with
// it: the kernel batches that teardown, which costs about a twentieth of deleting the veth here (20
// ms measured). The host end is only set down (0.2 ms), so that if some process still holds the
// namespace, its address, which netmgr is about to free, can no longer be reached on the bridge.
// Otherwise the host end is deleted, which removes both ends. It is idempotent.
func DetachVeth(env Env, ep *Endpoint, sb *sandbox.NetNS, opts DetachOptions) error {
	if ep.HostName == "" {
		return nil
	}
	link, err := env.HostHandle.LinkByName(ep.HostName)
	if IsLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("detach %s: find %s: %w", ep.Sandbox, ep.HostName, err)
	}
	if opts.NamespaceGoing && sb != nil {
		if err := env.HostHandle.LinkSetDown(link); err != nil && !IsLinkNotFound(err) {
			return fmt.Errorf("detach %s: set %s down: %w", ep.Sandbox, ep.HostName, err)
		}
		return nil
	}
	if err := env.HostHandle.LinkDel(link); err != nil && !IsLinkNotFound(err) {
		return fmt.Errorf("detach %s: delete %s: %w", ep.Sandbox, ep.HostName, err)
	}
	return nil
}

// CollectVeths deletes the host ends of veths named with prefix that no endpoint names (in.InUse):
// a sandbox deleted while another process held its namespace leaves its veth alive but cut off, and
// a create killed before its record leaves one too. It returns the names removed and the failures.
func CollectVeths(env Env, log *slog.Logger, in CollectInput, prefix string) (removed []string, errs []error) {
	for _, l := range in.Links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, prefix) || l.Type() != "veth" || in.InUse[name] {
			continue
		}
		// The kernel may be destroying it already, with its namespace: "not found" then is success.
		if err := env.HostHandle.LinkDel(l); err != nil && !IsLinkNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
			continue
		}
		log.Warn("gc: host interface no endpoint names deleted", "ifname", name)
		removed = append(removed, name)
	}
	return removed, errs
}

// EnableForwarding switches on IP forwarding in the host namespace for the families of subnets.
//
// For IPv6 the switch is conf/all/forwarding, which also puts every interface into router mode: an
// interface with accept_ra=1 then ignores router advertisements, and a host that took its default
// route by SLAAC loses it when the route expires (REVIEW §1.10). Per-interface forwarding does not
// help: it sets only the router/host behaviour, while the kernel forwards IPv6 only with
// all/forwarding on (6.17's per-interface force_forwarding would have to be on the uplinks too). So,
// as LXD and Incus do, before netmgr turns IPv6 forwarding on it raises accept_ra from 1 to 2
// ("accept even when forwarding") on every interface of the host namespace but netmgr's own devices
// (OwnerAliasPrefix), bridge ports and loopback, and logs each. Interfaces made later take
// conf/default, which is left alone so that netmgr's next bridges never accept advertisements from
// pods. Where IPv6 forwarding is already on, someone else chose router mode, and nothing is changed.
func EnableForwarding(env Env, log *slog.Logger, subnets []netip.Prefix) error {
	v4, v6 := false, false
	for _, sn := range subnets {
		if sn.Addr().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	return env.Host.Do(func() error {
		if v4 && !sysctlOn("/proc/sys/net/ipv4/ip_forward") {
			if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
				return fmt.Errorf("enable forwarding: %w", err)
			}
		}
		const all6 = "/proc/sys/net/ipv6/conf/all/forwarding"
		if !v6 || sysctlOn(all6) {
			return nil
		}
		// Only now, on the first IPv6 network of a host: the links whose accept_ra stays as it is.
		links, err := LinkList(env.HostHandle)
		if err != nil {
			return fmt.Errorf("enable forwarding: list links: %w", err)
		}
		skip := map[string]bool{}
		for _, l := range links {
			if a := l.Attrs(); strings.HasPrefix(a.Alias, OwnerAliasPrefix) || a.MasterIndex != 0 || a.Flags&net.FlagLoopback != 0 {
				skip[a.Name] = true
			}
		}
		if err := keepAcceptingRA(log, skip); err != nil {
			return err
		}
		if err := os.WriteFile(all6, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
		return nil
	})
}

// NoDAD turns duplicate address detection off on an interface netmgr made, before it comes up, as
// its global addresses already are (IFA_F_NODAD). Otherwise a bridge's link-local address is
// tentative for a second or two, the host solicits a sandbox's address from :: when it forwards the
// first packet to it, the sandbox takes that for another host's DAD probe and never answers, and the
// first IPv6 connections from outside to a silent sandbox time out. The interface is netmgr's alone:
// no other host on it can hold its addresses.
func NoDAD(env Env, ifname string) error {
	return env.Host.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/accept_dad", []byte("0"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("turn off DAD on %s: %w", ifname, err)
		}
		return nil
	})
}

func sysctlOn(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && len(b) > 0 && b[0] == '1'
}

// keepAcceptingRA sets accept_ra=2 on every interface of the current namespace that has accept_ra=1,
// except those in skip; see EnableForwarding. It runs inside Host.Do.
func keepAcceptingRA(log *slog.Logger, skip map[string]bool) error {
	const dir = "/proc/sys/net/ipv6/conf"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("enable forwarding: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if name == "all" || name == "default" || skip[name] {
			continue
		}
		p := filepath.Join(dir, name, "accept_ra")
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the interface went away meanwhile
		}
		if strings.TrimSpace(string(b)) != "1" {
			continue
		}
		if err := os.WriteFile(p, []byte("2"), 0o644); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("enable forwarding: keep accepting router advertisements on %s: %w", name, err)
		}
		log.Info("set accept_ra=2 so that the interface keeps accepting IPv6 router advertisements once forwarding is on", "ifname", name)
	}
	return nil
}
