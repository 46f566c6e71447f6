package netmgr

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/intent"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/netmgr/portmap"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Published ports are held in the runtime store, taken in the transaction that records the sandbox,
// so that two creates (in any processes) cannot both publish one port; the keys, the conflict rules,
// the plan of the transaction and the decisions of repair are package portmap's.
const keyPorts = portmap.KeyPrefix

// portRecord is one published host port of a sandbox (ranges are recorded port by port), with the
// addresses it forwards to.
type portRecord = portmap.Record

// planPorts validates spec.Publish against the sandbox's attachments and the ports already
// published, records the ports in rec, and returns the compares and writes that take them.
func (m *Manager) planPorts(ctx context.Context, spec SandboxSpec, rec *sandboxRecord, nets []*netState) ([]store.Cmp, []store.Op, error) {
	if len(spec.Publish) == 0 {
		return nil, nil, nil
	}
	if !rec.hasInterfaces() {
		return nil, nil, fmt.Errorf("%w: published ports need a sandbox with interfaces of its own (not --host or --join)", ErrInvalid)
	}
	target := -1
	for i, ns := range nets {
		if _, ok := portTarget(ns); ok {
			target = i
			break
		}
	}
	if target < 0 {
		return nil, nil, fmt.Errorf("%w: published ports need an attachment to a network that is not internal and whose driver can take published ports (bridge)", ErrInvalid)
	}
	ep := rec.Endpoints[target]
	req := portmap.Request{Owner: rec.Name, Network: ep.Network, Mappings: spec.Publish, HostAddrs: m.hostAddrs}
	for _, a := range ep.Addrs {
		if a.Addr().Is4() {
			req.Target4 = a.Addr()
		} else {
			req.Target6 = a.Addr()
		}
	}
	res, err := portmap.Plan(ctx, m.rt, req)
	if err != nil {
		return nil, nil, portErr(err)
	}
	rec.Ports = res.Records
	return res.Cmps, res.Ops, nil
}

// hostAddrs returns the addresses of the host namespace.
func (m *Manager) hostAddrs() (map[netip.Addr]bool, error) {
	addrs, err := drivers.AddrList(m.hh, nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	out := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out[ip.Unmap()] = true
		}
	}
	return out, nil
}

// firewallPorts turns a sandbox's port records into firewall ports, one per target family.
func firewallPorts(rec *sandboxRecord) []firewall.Port {
	return portmap.FirewallPorts(rec.Name, rec.Ports)
}

// publishPorts opens a plumbed sandbox's published ports: one nftables transaction, after
// route_localnet is set on the host interfaces they lead to (so that the host's 127.0.0.1 reaches
// them).
func (m *Manager) publishPorts(ctx context.Context, rec *sandboxRecord, nets []*netState) error {
	if len(rec.Ports) == 0 {
		return nil
	}
	var ifaces []string
	for _, ns := range nets {
		for _, p := range rec.Ports {
			if p.Network == ns.rec.Name && p.Target4.IsValid() {
				if is, ok := portTarget(ns); ok {
					ifaces = append(ifaces, is...)
				}
				break
			}
		}
	}
	if err := m.setRouteLocalnet(ifaces); err != nil {
		return err
	}
	if err := m.fw.AddPorts(ctx, firewallPorts(rec)); err != nil {
		if errors.Is(err, firewall.ErrInvalid) {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		return err
	}
	m.log.Debug("ports published", "sandbox", rec.Name, "ports", len(rec.Ports))
	return nil
}

// setRouteLocalnet sets net.ipv4.conf.IFACE.route_localnet=1 in the host namespace: without it the
// kernel refuses to route a packet from 127.0.0.1 out of a non-loopback interface. The ports table
// drops what this would otherwise let in (see package firewall).
func (m *Manager) setRouteLocalnet(ifaces []string) error {
	if len(ifaces) == 0 {
		return nil
	}
	return m.host.Do(func() error {
		for _, br := range ifaces {
			if strings.HasSuffix(br, "*") {
				// A wildcard (a routed network's veths): its driver sets route_localnet on each.
				continue
			}
			k := "/proc/sys/net/ipv4/conf/" + br + "/route_localnet"
			if b, err := os.ReadFile(k); err == nil && strings.TrimSpace(string(b)) == "1" {
				continue
			}
			if err := os.WriteFile(k, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("set route_localnet on %s: %w", br, err)
			}
		}
		return nil
	})
}

// unpublishPorts closes a sandbox's published ports; it is idempotent and needs nothing but the
// record.
func (m *Manager) unpublishPorts(ctx context.Context, rec *sandboxRecord) error {
	if len(rec.Ports) == 0 {
		return nil
	}
	if err := m.fw.RemovePorts(ctx, firewallPorts(rec)); err != nil {
		return err
	}
	m.log.Debug("ports unpublished", "sandbox", rec.Name, "ports", len(rec.Ports))
	return nil
}

// portReleaseOps are the writes that free a sandbox's ports, committed with the removal of its record.
func portReleaseOps(rec *sandboxRecord) []store.Op { return portmap.ReleaseOps(rec.Ports) }

// refuseDetachPorted returns ErrInUse if the sandbox's published ports lead to network.
func (r *sandboxRecord) refuseDetachPorted(network string) error {
	for _, p := range r.Ports {
		if p.Network == network {
			return fmt.Errorf("%w: published ports (%s...) lead to network %q; remove the sandbox to unpublish them", ErrInUse, p.Mapping, network)
		}
	}
	return nil
}

// publicPorts is the published ports as asked, for Sandbox.Ports.
func (r *sandboxRecord) publicPorts() []PortMapping {
	if len(r.Ports) == 0 {
		return nil
	}
	out := make([]PortMapping, len(r.Ports))
	for i, p := range r.Ports {
		out[i] = p.Mapping
	}
	return out
}

// recoverPorts is Recover's part for published ports: it removes port keys that no sandbox holds,
// removes nftables elements that no sandbox record names, and re-adds the missing elements of
// sandboxes that no operation is working on. It reads the kernel and the port keys before the
// records, so that anything created meanwhile is not mistaken for a leftover.
func (m *Manager) recoverPorts(ctx context.Context, rep *Report) {
	have, err := m.fw.Ports(ctx)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	keys, _, err := m.rt.List(ctx, keyPorts)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	sbs, err := m.sandboxRecords(ctx)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	intents, err := intent.List(ctx, m.rt, intent.SandboxPrefix)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	busy := intent.Names(intents)

	// Store: holders without a sandbox record that names them, then guards without holders.
	records := make([][]portRecord, 0, len(sbs))
	for _, s := range sbs {
		records = append(records, s.Ports)
	}
	held := portmap.HeldKeys(records...)
	for _, kv := range portmap.Orphans(keys, held, func(owner string) bool { return busy[owner] }) {
		if err := m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, []store.Op{store.Del(kv.Key)}); err == nil {
			rep.Ports = append(rep.Ports, "key "+strings.TrimPrefix(kv.Key, keyPorts))
		}
	}
	left, _, err := m.rt.List(ctx, keyPorts)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	for _, kv := range portmap.EmptyGuards(left, held) {
		_ = m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, []store.Op{store.Del(kv.Key)})
	}

	// Kernel: the table's fixed rules are re-asserted, elements no record names go, and missing
	// elements of idle sandboxes come back.
	want := map[string][]firewall.Port{}
	for _, s := range sbs {
		if ps := firewallPorts(s); len(ps) > 0 {
			want[s.Name] = ps
		}
	}
	diff := portmap.Compare(have, want)
	if diff.Wanted {
		if err := m.fw.EnsurePorts(ctx); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		}
	}
	if len(diff.Stale) > 0 {
		if err := m.fw.RemovePorts(ctx, diff.Stale); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		} else {
			for _, p := range diff.Stale {
				rep.Ports = append(rep.Ports, "rule "+p.String())
			}
		}
	}
	for _, s := range sbs {
		missing := diff.Missing[s.Name]
		if busy[s.Name] || len(s.Ports) == 0 || len(missing) == 0 {
			continue
		}
		if err := m.republish(ctx, s.Name, missing); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("republish ports of %s: %v", s.Name, err))
			continue
		}
		rep.Ports = append(rep.Ports, "republished "+s.Name)
	}
}

// republish re-adds a sandbox's missing ports under its lock, if the sandbox still exists and no
// operation holds it.
func (m *Manager) republish(ctx context.Context, name string, ports []firewall.Port) error {
	l, err := m.tryLock("sandbox-" + name)
	if err != nil {
		return nil // a live operation owns it
	}
	defer l.Unlock(false)
	rec, _, err := m.readSandbox(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := m.rt.Get(ctx, intent.SandboxKey(name)); err == nil {
		return nil
	}
	still := portmap.Still(ports, rec.Name, rec.Ports)
	if len(still) == 0 {
		return nil
	}
	return m.fw.AddPorts(ctx, still)
}
