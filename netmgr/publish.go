package netmgr

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr/firewall"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Published ports are held in the runtime store, taken in the transaction that records the sandbox,
// so that two creates (in any processes) cannot both publish one port:
//
//	ports/PROTO/PPPPP        -> ""            a guard that every taker of port PPPPP rewrites
//	ports/PROTO/PPPPP/HOST   -> sandbox name  HOST is "*" (any address), 0.0.0.0, :: or an address
//
// Ports are zero-padded to five digits so that listing "ports/tcp/08080" returns that port's guard
// and holders and nothing else. A specific address and a wildcard of its family conflict, and they
// have different keys, so the compare on the guard's revision is what orders concurrent takers.
const keyPorts = "ports/"

// portRecord is one published host port of a sandbox (ranges are recorded port by port), with the
// addresses it forwards to.
type portRecord struct {
	PortMapping
	Network string     `json:"network"`
	Target4 netip.Addr `json:"target4,omitzero"`
	Target6 netip.Addr `json:"target6,omitzero"`
}

func portGuardKey(proto string, port uint16) string {
	return fmt.Sprintf("%s%s/%05d", keyPorts, proto, port)
}

// hostKey names a mapping's host address in its store key.
func hostKey(a netip.Addr) string {
	if !a.IsValid() {
		return "*"
	}
	return a.String()
}

func (p portRecord) holderKey() string {
	return portGuardKey(p.Protocol, p.HostPort) + "/" + hostKey(p.HostIP)
}

// hostsConflict reports whether two host address keys of one protocol and port overlap.
func hostsConflict(a, b string) bool {
	if a == "*" || b == "*" || a == b {
		return true
	}
	aa, aerr := netip.ParseAddr(a)
	ba, berr := netip.ParseAddr(b)
	if aerr != nil || berr != nil || aa.Is4() != ba.Is4() {
		return false
	}
	return aa.IsUnspecified() || ba.IsUnspecified()
}

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
	var t4, t6 netip.Addr
	for _, a := range ep.Addrs {
		if a.Addr().Is4() {
			t4 = a.Addr()
		} else {
			t6 = a.Addr()
		}
	}
	var local map[netip.Addr]bool
	ports := make([]portRecord, 0, len(spec.Publish))
	for _, pm := range spec.Publish {
		p, err := normalizeMapping(pm)
		if err != nil {
			return nil, nil, err
		}
		if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
			if local == nil {
				if local, err = m.hostAddrs(); err != nil {
					return nil, nil, err
				}
			}
			if !local[p.HostIP] {
				return nil, nil, fmt.Errorf("%w: publish %s: %s is not an address of the host", ErrInvalid, p, p.HostIP)
			}
		}
		r := portRecord{PortMapping: p, Network: ep.Network}
		if !p.HostIP.IsValid() || p.HostIP.Is4() {
			r.Target4 = t4
		}
		if !p.HostIP.IsValid() || p.HostIP.Is6() {
			r.Target6 = t6
		}
		if !r.Target4.IsValid() && !r.Target6.IsValid() {
			return nil, nil, fmt.Errorf("%w: publish %s: the sandbox has no address of that family on network %q", ErrInvalid, p, ep.Network)
		}
		ports = append(ports, r)
	}
	// Conflicts within the spec.
	byPort := map[string][]portRecord{}
	for _, p := range ports {
		g := portGuardKey(p.Protocol, p.HostPort)
		for _, q := range byPort[g] {
			if hostsConflict(hostKey(p.HostIP), hostKey(q.HostIP)) {
				return nil, nil, fmt.Errorf("%w: publish %s and %s: the same host port twice", ErrInvalid, q.PortMapping, p.PortMapping)
			}
		}
		byPort[g] = append(byPort[g], p)
	}
	// Conflicts with what is published: one consistent read of each port's guard and holders, or of
	// a whole protocol when many ports are asked for at once.
	held := map[string]store.KV{}
	perProto := map[string]int{}
	for g := range byPort {
		perProto[strings.Split(strings.TrimPrefix(g, keyPorts), "/")[0]]++
	}
	for proto, n := range perProto {
		if n <= 8 {
			continue
		}
		kvs, _, err := m.rt.List(ctx, keyPorts+proto+"/")
		if err != nil {
			return nil, nil, err
		}
		for _, kv := range kvs {
			held[kv.Key] = kv
		}
	}
	var cmps []store.Cmp
	var ops []store.Op
	guards := make([]string, 0, len(byPort))
	for g := range byPort {
		guards = append(guards, g)
	}
	sort.Strings(guards)
	for _, g := range guards {
		if perProto[strings.Split(strings.TrimPrefix(g, keyPorts), "/")[0]] <= 8 {
			kvs, _, err := m.rt.List(ctx, g)
			if err != nil {
				return nil, nil, err
			}
			for _, kv := range kvs {
				held[kv.Key] = kv
			}
		}
		for _, p := range byPort[g] {
			for k, kv := range held {
				host, ok := strings.CutPrefix(k, g+"/")
				if ok && hostsConflict(host, hostKey(p.HostIP)) {
					return nil, nil, fmt.Errorf("%w: publish %s: host port %d/%s is already published by sandbox %q", ErrExists, p.PortMapping, p.HostPort, p.Protocol, kv.Value)
				}
			}
			cmps = append(cmps, store.Absent(p.holderKey()))
			ops = append(ops, store.Put(p.holderKey(), []byte(rec.Name)))
		}
		cmps = append(cmps, store.Cmp{Key: g, Rev: held[g].Rev})
		ops = append(ops, store.Put(g, nil))
	}
	rec.Ports = ports
	return cmps, ops, nil
}

// normalizeMapping validates one mapping and returns it with a lower-case protocol and a plain host
// address.
func normalizeMapping(pm PortMapping) (PortMapping, error) {
	p := pm
	p.Protocol = strings.ToLower(p.Protocol)
	if p.Protocol == "" {
		p.Protocol = ProtoTCP
	}
	p.HostIP = p.HostIP.Unmap()
	switch {
	case p.Protocol != ProtoTCP && p.Protocol != ProtoUDP:
		return p, fmt.Errorf("%w: publish %s: protocol %q is not tcp or udp", ErrInvalid, pm, pm.Protocol)
	case p.HostPort == 0 || p.ContainerPort == 0:
		return p, fmt.Errorf("%w: publish %s: ports must be 1-65535", ErrInvalid, pm)
	case p.HostIP.Zone() != "":
		return p, fmt.Errorf("%w: publish %s: a host address with a zone cannot be published on", ErrInvalid, pm)
	case p.HostIP.IsValid() && !p.HostIP.IsUnspecified() && (p.HostIP.IsMulticast() || p.HostIP.IsLinkLocalUnicast()):
		return p, fmt.Errorf("%w: publish %s: %s is not a unicast address DNAT can serve", ErrInvalid, pm, p.HostIP)
	case p.HostIP.Is6() && p.HostIP.IsLoopback():
		return p, fmt.Errorf("%w: publish %s: the kernel does not forward from ::1; publish on :: or an address of the host", ErrInvalid, pm)
	}
	return p, nil
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
	var out []firewall.Port
	for _, p := range rec.Ports {
		for _, t := range []netip.Addr{p.Target4, p.Target6} {
			if t.IsValid() {
				out = append(out, firewall.Port{
					Protocol: p.Protocol, HostIP: p.HostIP, HostPort: p.HostPort,
					Target: netip.AddrPortFrom(t, p.ContainerPort), Owner: rec.Name,
				})
			}
		}
	}
	return out
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
// Deleting the guard makes a concurrent taker of the port re-read, which is all it is for.
func portReleaseOps(rec *sandboxRecord) []store.Op {
	ops := make([]store.Op, 0, 2*len(rec.Ports))
	for _, p := range rec.Ports {
		ops = append(ops, store.Del(p.holderKey()), store.Del(portGuardKey(p.Protocol, p.HostPort)))
	}
	return ops
}

// refuseDetachPorted returns ErrInUse if the sandbox's published ports lead to network.
func (r *sandboxRecord) refuseDetachPorted(network string) error {
	for _, p := range r.Ports {
		if p.Network == network {
			return fmt.Errorf("%w: published ports (%s...) lead to network %q; remove the sandbox to unpublish them", ErrInUse, p.PortMapping, network)
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
		out[i] = p.PortMapping
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
	intents, _, err := m.rt.List(ctx, keyIntentSB)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	busy := map[string]bool{}
	for _, kv := range intents {
		busy[strings.TrimPrefix(kv.Key, keyIntentSB)] = true
	}

	// Store: holders without a sandbox record that names them, then guards without holders.
	heldKeys := map[string]bool{}
	for _, s := range sbs {
		for _, p := range s.Ports {
			heldKeys[p.holderKey()] = true
			heldKeys[portGuardKey(p.Protocol, p.HostPort)] = true
		}
	}
	for _, kv := range keys {
		if heldKeys[kv.Key] || busy[string(kv.Value)] {
			continue
		}
		if strings.Count(kv.Key, "/") == 2 { // a guard: keep it while any key under it stays
			continue
		}
		if err := m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, []store.Op{store.Del(kv.Key)}); err == nil {
			rep.Ports = append(rep.Ports, "key "+strings.TrimPrefix(kv.Key, keyPorts))
		}
	}
	left, _, err := m.rt.List(ctx, keyPorts)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	hasHolder := map[string]bool{}
	for _, kv := range left {
		if strings.Count(kv.Key, "/") == 3 {
			hasHolder[kv.Key[:strings.LastIndexByte(kv.Key, '/')]] = true
		}
	}
	for _, kv := range left {
		if strings.Count(kv.Key, "/") == 2 && !hasHolder[kv.Key] && !heldKeys[kv.Key] {
			_ = m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, []store.Op{store.Del(kv.Key)})
		}
	}

	// Kernel: the table's fixed rules are re-asserted, elements no record names go, and missing
	// elements of idle sandboxes come back.
	want := map[string]bool{}
	for _, s := range sbs {
		for _, p := range firewallPorts(s) {
			want[portID(p)] = true
		}
	}
	if len(want) > 0 {
		if err := m.fw.EnsurePorts(ctx); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		}
	}
	var stale []firewall.Port
	present := map[string]bool{}
	for _, p := range have {
		present[portID(p)] = true
		if !want[portID(p)] {
			stale = append(stale, p)
		}
	}
	if len(stale) > 0 {
		if err := m.fw.RemovePorts(ctx, stale); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		} else {
			for _, p := range stale {
				rep.Ports = append(rep.Ports, "rule "+p.String())
			}
		}
	}
	for _, s := range sbs {
		if busy[s.Name] || len(s.Ports) == 0 {
			continue
		}
		var missing []firewall.Port
		for _, p := range firewallPorts(s) {
			if !present[portID(p)] {
				missing = append(missing, p)
			}
		}
		if len(missing) == 0 {
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
	if _, err := m.rt.Get(ctx, keyIntentSB+name); err == nil {
		return nil
	}
	cur := map[string]bool{}
	for _, p := range firewallPorts(rec) {
		cur[portID(p)] = true
	}
	var still []firewall.Port
	for _, p := range ports {
		if cur[portID(p)] {
			still = append(still, p)
		}
	}
	if len(still) == 0 {
		return nil
	}
	return m.fw.AddPorts(ctx, still)
}

func portID(p firewall.Port) string {
	host := "*"
	if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
		host = p.HostIP.String()
	}
	return p.Protocol + "|" + host + "|" + strconv.Itoa(int(p.HostPort)) + "|" + p.Target.String()
}
