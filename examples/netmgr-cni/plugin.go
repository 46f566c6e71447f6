package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// plugin carries what every command shares.
type plugin struct {
	ctx context.Context
}

// openManager opens netmgr's state for c. The host namespace is the plugin process's own, which is
// the runtime's: that is where CNI plugins put host-side plumbing.
func (p *plugin) openManager(c *config) (*netmgr.Manager, func(), error) {
	log, closeLog, err := logger(c)
	if err != nil {
		return nil, nil, err
	}
	m, err := netmgr.New(p.ctx, netmgr.WithStateDir(c.stateDir), netmgr.WithRunDir(c.runDir), netmgr.WithLogger(log))
	if err != nil {
		closeLog()
		code := types.ErrPluginNotAvailable
		if errors.Is(err, store.ErrCorrupt) {
			code = types.ErrInternal // as cniError maps it
		}
		return nil, nil, types.NewError(code, fmt.Sprintf("open netmgr state (stateDir %s, runDir %s): %v", c.stateDir, c.runDir, err), "")
	}
	return m, func() { m.Close(); closeLog() }, nil
}

func logger(c *config) (*slog.Logger, func(), error) {
	if c.conf.LogFile == "" {
		return slog.New(slog.DiscardHandler), func() {}, nil
	}
	var level slog.Level
	if c.conf.LogLevel != "" {
		if err := level.UnmarshalText([]byte(c.conf.LogLevel)); err != nil {
			return nil, nil, invalidConf("logLevel %q: use debug, info, warn or error", c.conf.LogLevel)
		}
	}
	f, err := os.OpenFile(c.conf.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, invalidConf("logFile: %v", err)
	}
	return slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: level})), func() { f.Close() }, nil
}

// hasState reports whether netmgr-cni ever recorded anything in c's state dir; DEL and GC have
// nothing to do without, and must not create it.
func hasState(c *config) bool {
	_, err := os.Stat(filepath.Join(c.stateDir, "netmgr.db"))
	return err == nil
}

// retryBusy retries op while netmgr reports another process working on the same object (two ADDs
// racing to create the network, say), for up to 15 s; then the runtime gets "try again later".
func retryBusy[T any](ctx context.Context, op func() (T, error)) (T, error) {
	wait := 2 * time.Millisecond
	deadline := time.Now().Add(15 * time.Second)
	for {
		v, err := op()
		if !errors.Is(err, netmgr.ErrBusy) || time.Now().After(deadline) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// recoverAfterBoot runs netmgr's full Recover once per boot: it re-creates bridges and rules that a
// reboot wiped and drops attachments whose namespaces went with it. The boot ID is kept in the state
// dir because the run dir need not be on a tmpfs.
func (p *plugin) recoverAfterBoot(m *netmgr.Manager, c *config) {
	cur, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return
	}
	path := filepath.Join(c.stateDir, "boot_id")
	if old, _ := os.ReadFile(path); bytes.Equal(old, cur) {
		return
	}
	// Problems are left for GC and `podctl gc` to report; the ADD itself still tells what fails.
	_, _ = m.Recover(p.ctx)
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	if os.WriteFile(tmp, cur, 0o600) == nil {
		_ = os.Rename(tmp, path)
	}
}

// ensureNetwork returns the network c stands for, creating it on first use. Several plugin processes
// may race to create it: the losers see ErrExists or ErrBusy and read what the winner made.
func (p *plugin) ensureNetwork(m *netmgr.Manager, c *config) (*netmgr.Network, error) {
	return retryBusy(p.ctx, func() (*netmgr.Network, error) {
		n, err := m.Network(p.ctx, c.spec.Name)
		if err == nil {
			return n, mismatch(n, c)
		}
		if !errors.Is(err, netmgr.ErrNotFound) {
			return nil, err
		}
		n, err = m.CreateNetwork(p.ctx, c.spec)
		if errors.Is(err, netmgr.ErrExists) {
			if n, rerr := m.Network(p.ctx, c.spec.Name); rerr == nil {
				return n, mismatch(n, c)
			}
		}
		return n, err
	})
}

// mismatch reports how the recorded network differs from what the configuration asks for. Keys the
// configuration leaves out (a gateway, options the driver defaulted) are not compared.
func mismatch(n *netmgr.Network, c *config) error {
	var diffs []string
	if n.Driver != c.spec.Driver {
		diffs = append(diffs, fmt.Sprintf("driver %s (configuration: %s)", n.Driver, c.spec.Driver))
	}
	if !sameSet(n.Subnets, c.spec.Subnets) {
		diffs = append(diffs, fmt.Sprintf("subnets %v (configuration: %v)", n.Subnets, c.spec.Subnets))
	}
	for _, g := range c.spec.Gateways {
		if !slices.Contains(n.Gateways, g) {
			diffs = append(diffs, fmt.Sprintf("gateways %v (configuration: %v)", n.Gateways, c.spec.Gateways))
			break
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.spec.Options)) {
		if n.Options[k] != c.spec.Options[k] {
			diffs = append(diffs, fmt.Sprintf("option %s=%q (configuration: %q)", k, n.Options[k], c.spec.Options[k]))
		}
	}
	if n.Internal != c.spec.Internal {
		diffs = append(diffs, fmt.Sprintf("internal %v (configuration: %v)", n.Internal, c.spec.Internal))
	}
	if c.spec.MTU != 0 && n.MTU != c.spec.MTU {
		diffs = append(diffs, fmt.Sprintf("mtu %d (configuration: %d)", n.MTU, c.spec.MTU))
	}
	if len(diffs) == 0 {
		return nil
	}
	return invalidConf("network %q exists in %s with %s. Restore the configuration, or remove every attachment and "+
		"delete the network (podctl --state-dir %s --run-dir %s network rm %s) so that the next ADD creates it anew",
		n.Name, c.stateDir, strings.Join(diffs, ", "), c.stateDir, c.runDir, n.Name)
}

func sameSet(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for _, p := range b {
		if !slices.Contains(a, p) {
			return false
		}
	}
	return true
}

func labels(c *config, args *skel.CmdArgs) map[string]string {
	return map[string]string{
		LabelNetwork:     c.conf.Name,
		LabelContainerID: args.ContainerID,
		LabelIfName:      args.IfName,
		LabelNetNS:       args.Netns,
	}
}

// sameNetNS reports whether two paths name the same namespace.
func sameNetNS(a, b string) bool {
	if a == b {
		return true
	}
	na, err := sandbox.Open(a)
	if err != nil {
		return false
	}
	defer na.Close()
	nb, err := sandbox.Open(b)
	if err != nil {
		return false
	}
	defer nb.Close()
	ia, erra := na.Inode()
	ib, errb := nb.Inode()
	return erra == nil && errb == nil && ia == ib
}

func (p *plugin) cmdAdd(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	if err := checkNetNS(args.Netns); err != nil {
		return cniError(err)
	}
	m, done, err := p.openManager(c)
	if err != nil {
		return err
	}
	defer done()
	p.recoverAfterBoot(m, c)
	n, err := p.ensureNetwork(m, c)
	if err != nil {
		return cniError(err)
	}
	name := sandboxName(c.conf.Name, args.ContainerID, args.IfName)
	spec := netmgr.SandboxSpec{
		Name:    name,
		NetNS:   args.Netns,
		Labels:  labels(c, args),
		Publish: c.publish,
		Networks: []netmgr.AttachSpec{{
			Network: c.conf.Name, IPs: c.ips, MAC: c.mac, IfName: args.IfName,
		}},
	}
	sb, err := retryBusy(p.ctx, func() (*netmgr.Sandbox, error) { return m.CreateSandbox(p.ctx, spec) })
	if errors.Is(err, netmgr.ErrExists) {
		// A repeated ADD (a runtime retrying after a timeout) gets the same answer; an ADD into another
		// namespace, or asking for other addresses, MAC or ports, for an attachment that was never
		// deleted is the runtime's mistake to see.
		if old, gerr := m.Sandbox(p.ctx, name); gerr == nil {
			if !sameNetNS(old.NetNS, args.Netns) {
				return types.NewError(ErrAttachmentExists, fmt.Sprintf("container %s already has interface %s on network %q in netns %s; DEL it before adding it to %s",
					args.ContainerID, args.IfName, c.conf.Name, old.NetNS, args.Netns), "")
			}
			if diffs := requestDiff(c, old); len(diffs) > 0 {
				return types.NewError(ErrAttachmentExists, fmt.Sprintf("container %s already has interface %s on network %q, with %s; repeat the ADD unchanged, or DEL it first",
					args.ContainerID, args.IfName, c.conf.Name, strings.Join(diffs, ", ")), "")
			}
			sb, err = old, nil
		}
	}
	if errors.Is(err, netmgr.ErrNotFound) {
		if _, nerr := m.Network(p.ctx, c.spec.Name); errors.Is(nerr, netmgr.ErrNotFound) {
			return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("network %q was deleted while container %s was being added; try again", c.spec.Name, args.ContainerID), "")
		}
	}
	if err != nil {
		return cniError(err)
	}
	r, err := buildResult(c, n, sb, args)
	if err != nil {
		return cniError(err)
	}
	return types.PrintResult(r, c.conf.CNIVersion)
}

// requestDiff compares what an ADD asks for with the attachment that exists: the static addresses and
// MAC it requests (if any) and its port mappings (exactly). It returns each difference as "what the
// attachment has (requested: what the ADD asks)".
func requestDiff(c *config, sb *netmgr.Sandbox) []string {
	var diffs []string
	var at *netmgr.Attachment
	for i := range sb.Attachments {
		if sb.Attachments[i].Network == c.conf.Name {
			at = &sb.Attachments[i]
		}
	}
	if at == nil {
		return []string{fmt.Sprintf("no attachment to network %q in its record", c.conf.Name)}
	}
	var have []netip.Addr
	for _, a := range at.Addrs {
		have = append(have, a.Addr())
	}
	for _, ip := range c.ips {
		if !slices.Contains(have, ip) {
			diffs = append(diffs, fmt.Sprintf("addresses %v (requested: %v)", have, c.ips))
			break
		}
	}
	if c.mac != "" {
		if want, err := net.ParseMAC(c.mac); err == nil && !strings.EqualFold(want.String(), at.MAC) {
			diffs = append(diffs, fmt.Sprintf("mac %s (requested: %s)", at.MAC, want))
		}
	}
	ports := func(pms []netmgr.PortMapping) []string {
		out := []string{}
		for _, pm := range pms {
			pm.HostIP = pm.HostIP.Unmap() // as netmgr records it
			out = append(out, pm.String())
		}
		slices.Sort(out)
		return out
	}
	if have, want := ports(sb.Ports), ports(c.publish); !slices.Equal(have, want) {
		diffs = append(diffs, fmt.Sprintf("port mappings %v (requested: %v)", have, want))
	}
	return diffs
}

func (p *plugin) cmdDel(args *skel.CmdArgs) error {
	c, err := parseDirs(args.StdinData)
	if err != nil {
		return err
	}
	if !hasState(c) {
		return nil
	}
	m, done, err := p.openManager(c)
	if err != nil {
		return err
	}
	defer done()
	name := sandboxName(c.conf.Name, args.ContainerID, args.IfName)
	sb, err := m.Sandbox(p.ctx, name)
	if errors.Is(err, netmgr.ErrNotFound) {
		return nil
	}
	if err != nil {
		return cniError(err)
	}
	_, err = retryBusy(p.ctx, func() (struct{}, error) {
		return struct{}{}, m.DeleteSandbox(p.ctx, name, netmgr.NamespaceGoing())
	})
	if err != nil {
		// The record stays, and so do the interfaces it describes: a retried DEL finds them.
		return cniError(err)
	}
	// See reap.go: netmgr has cut the container off and freed its address; free the interface names
	// now and destroy the interfaces in the background.
	if ns, retired := retire(sb); ns != nil {
		spawnReaper(ns, retired)
	}
	return nil
}

func (p *plugin) cmdCheck(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	if !hasState(c) {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("no netmgr-cni state in %s: container %s was never added", c.stateDir, args.ContainerID), "")
	}
	m, done, err := p.openManager(c)
	if err != nil {
		return err
	}
	defer done()
	n, err := m.Network(p.ctx, c.spec.Name)
	if errors.Is(err, netmgr.ErrNotFound) {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("network %q is not in %s: container %s was never added", c.spec.Name, c.stateDir, args.ContainerID), "")
	}
	if err != nil {
		return cniError(err)
	}
	if err := mismatch(n, c); err != nil {
		return err
	}
	sb, err := m.Sandbox(p.ctx, sandboxName(c.conf.Name, args.ContainerID, args.IfName))
	if errors.Is(err, netmgr.ErrNotFound) {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("container %s has no interface %s on network %q", args.ContainerID, args.IfName, c.conf.Name), "")
	}
	if err != nil {
		return cniError(err)
	}
	return checkAttachment(c, n, sb, args)
}

func (p *plugin) cmdGC(args *skel.CmdArgs) error {
	c, err := parseDirs(args.StdinData)
	if err != nil {
		return err
	}
	keep, given, err := validAttachments(args.StdinData)
	if err != nil {
		return invalidConf("%v", err)
	}
	if !given {
		return invalidConf("GC without %s: netmgr-cni removes only what the runtime says is not valid", validAttachmentsKey)
	}
	if !hasState(c) {
		return nil
	}
	m, done, err := p.openManager(c)
	if err != nil {
		return err
	}
	defer done()
	sbs, err := m.Sandboxes(p.ctx)
	if err != nil {
		return cniError(err)
	}
	var errs []error
	for _, s := range sbs {
		if s.Labels[LabelNetwork] != c.conf.Name || s.Labels[LabelContainerID] == "" {
			continue
		}
		if keep[types.GCAttachment{ContainerID: s.Labels[LabelContainerID], IfName: s.Labels[LabelIfName]}] {
			continue
		}
		if _, err := retryBusy(p.ctx, func() (struct{}, error) { return struct{}{}, m.DeleteSandbox(p.ctx, s.Name) }); err != nil {
			errs = append(errs, fmt.Errorf("container %s interface %s: %w", s.Labels[LabelContainerID], s.Labels[LabelIfName], err))
		}
	}
	// Then what no record names any more: leaked host interfaces, addresses, rules.
	if _, err := m.Recover(p.ctx); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "gc: "+err.Error(), "")
	}
	return nil
}

func (p *plugin) cmdStatus(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, "")
	if err != nil {
		return err
	}
	unavailable := func(format string, a ...any) error {
		return types.NewError(types.ErrPluginNotAvailable, "plugin not available: "+fmt.Sprintf(format, a...), "")
	}
	for _, d := range []struct{ what, dir string }{{"stateDir", c.stateDir}, {"runDir", c.runDir}} {
		if err := writable(d.dir); err != nil {
			return unavailable("%s %s is not writable: %v", d.what, d.dir, err)
		}
	}
	host, err := sandbox.Current()
	if err != nil {
		return unavailable("cannot open the host network namespace: %v", err)
	}
	h, err := host.NewHandle()
	host.Close()
	if err != nil {
		return unavailable("cannot talk netlink in the host network namespace: %v", err)
	}
	h.Close()
	m, done, err := p.openManager(c)
	if err != nil {
		return unavailable("%v", err)
	}
	defer done()
	// Read both state files: a corrupt one is found here, not by the next ADD.
	n, err := m.Network(p.ctx, c.spec.Name)
	switch {
	case err == nil:
		if err := mismatch(n, c); err != nil {
			return unavailable("%v", err)
		}
	case !errors.Is(err, netmgr.ErrNotFound):
		return unavailable("read network %q: %v", c.spec.Name, err)
	}
	if _, err := m.Sandbox(p.ctx, sandboxName(c.conf.Name, "status", "probe")); err != nil && !errors.Is(err, netmgr.ErrNotFound) {
		return unavailable("read attachments: %v", err)
	}
	return nil
}

// writable creates dir if needed and proves that a file can be written in it.
func writable(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".status-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_, werr := f.Write([]byte("ok"))
	return errors.Join(werr, f.Close(), os.Remove(name))
}
