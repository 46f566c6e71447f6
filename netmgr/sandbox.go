package netmgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/intent"
	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// AttachSpec asks for one attachment of a sandbox to a network.
type AttachSpec struct {
	Network string
	// IPs are static addresses, at most one per subnet family of the network; others are allocated.
	IPs []netip.Addr
	MAC string
	// IfName inside the sandbox; default ethN, N counting the sandbox's attachments.
	IfName string
}

// SandboxSpec describes a sandbox to create.
type SandboxSpec struct {
	Name     string
	Networks []AttachSpec
	// Host makes the sandbox the host's own namespace (no attachments allowed).
	Host bool
	// Join makes the sandbox share the namespace of the named sandbox (no attachments allowed).
	Join string
	// NetNS makes the sandbox use an existing namespace, such as one a container runtime created for
	// a CNI ADD. netmgr attaches interfaces to it and removes them on delete, but never removes the
	// namespace itself.
	NetNS  string
	Labels map[string]string
	// Aliases are more names the sandbox answers to in the DNS of its networks. An alias that is
	// another sandbox's name or alias on one of the networks is refused with ErrExists.
	Aliases []string
	// Pause starts a pause process holding the namespace (and new UTS and IPC namespaces).
	Pause bool
	// Hostname is set in the pause process's UTS namespace (needs Pause).
	Hostname string
	// Publish forwards host ports to the sandbox's address on its first bridge network that is not
	// internal (see PortMapping). A port another sandbox publishes is refused with ErrExists before
	// anything changes.
	Publish []PortMapping
}

// Sandbox is a sandbox as the Manager reports it.
type Sandbox struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Mode        string            `json:"mode"`
	NetNS       string            `json:"netns"`
	Join        string            `json:"join,omitempty"`
	Attachments []Attachment      `json:"attachments"`
	Labels      map[string]string `json:"labels,omitempty"`
	Aliases     []string          `json:"aliases,omitempty"`
	PausePID    int               `json:"pause_pid,omitempty"`
	Ports       []PortMapping     `json:"ports,omitempty"`
	Created     time.Time         `json:"created"`
}

// Attachment is one sandbox on one network.
type Attachment struct {
	Network       string         `json:"network"`
	Interface     string         `json:"interface"`
	HostInterface string         `json:"host_interface,omitempty"`
	IPv4          netip.Prefix   `json:"ipv4"`
	IPv6          netip.Prefix   `json:"ipv6"`
	Gateways      []netip.Addr   `json:"gateways,omitempty"`
	MAC           string         `json:"mac,omitempty"`
	Addrs         []netip.Prefix `json:"-"`
}

func (r *sandboxRecord) public() *Sandbox {
	s := &Sandbox{
		ID: r.ID, Name: r.Name, Mode: r.Mode, NetNS: r.NetNS, Join: r.Join, Labels: r.Labels, Aliases: r.Aliases,
		Created: r.Created, Attachments: []Attachment{}, Ports: r.publicPorts(),
	}
	if r.Pause != nil {
		s.PausePID = r.Pause.PID
	}
	for _, e := range r.Endpoints {
		a := Attachment{Network: e.Network, Interface: e.IfName, HostInterface: e.HostName, MAC: e.MAC, Gateways: e.Gateways, Addrs: e.Addrs}
		for _, p := range e.Addrs {
			if p.Addr().Is4() {
				a.IPv4 = p
			} else {
				a.IPv6 = p
			}
		}
		s.Attachments = append(s.Attachments, a)
	}
	return s
}

// CreateSandbox creates a sandbox: a pinned namespace (or the host's, or another sandbox's) with its
// attachments. On failure nothing is left behind.
func (m *Manager) CreateSandbox(ctx context.Context, spec SandboxSpec) (*Sandbox, error) {
	s, err := m.createSandbox(ctx, spec)
	return s, opErr("create", "sandbox", spec.Name, err)
}

// netState is a network as read for one transaction.
type netState struct {
	rec *networkRecord
	drv drivers.Driver
}

func (m *Manager) readNetwork(ctx context.Context, name string) (*netState, error) {
	if m.shared {
		// A cluster-wide network this node joined is read from the node's own copy.
		if j, err := m.joined(ctx, name); err == nil {
			drv, err := m.driver(j.Network.Driver)
			if err != nil {
				return nil, err
			}
			return &netState{rec: j.nodeNetwork(), drv: drv}, nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	rec, err := m.readNetworkRecord(ctx, name)
	if err != nil {
		return nil, err
	}
	// A network create or delete in flight holds the network's exclusive lock, which callers wait for
	// (lockNetworksShared). A create still marked once we hold the shared lock is one whose process
	// died: attaching to it would hand its repair a network in use, so wait for the repair.
	if err := m.refuseForeign(rec); err != nil {
		return nil, err
	}
	if rec.Creating {
		return nil, fmt.Errorf("%w: network %q: an interrupted create awaits repair (podctl gc)", ErrBusy, name)
	}
	drv, err := m.driver(rec.Driver)
	if err != nil {
		return nil, err
	}
	if spansNodes(drv) {
		return nil, m.notJoined(name)
	}
	return &netState{rec: rec, drv: drv}, nil
}

func (m *Manager) createSandbox(ctx context.Context, spec SandboxSpec) (_ *Sandbox, err error) {
	if err := checkName("sandbox", spec.Name); err != nil {
		return nil, err
	}
	switch {
	case spec.Host && spec.Join != "", spec.NetNS != "" && (spec.Host || spec.Join != ""):
		return nil, fmt.Errorf("%w: choose one of a host namespace, joining another sandbox, or an existing namespace", ErrInvalid)
	case (spec.Host || spec.Join != "") && len(spec.Networks) > 0:
		return nil, fmt.Errorf("%w: a sandbox that uses the host's or another sandbox's namespace takes no --network", ErrInvalid)
	case spec.Pause && requestedMode(spec) != ModeNetNS:
		return nil, fmt.Errorf("%w: a pause process needs a namespace of the sandbox's own (not --host, --join or an existing namespace)", ErrInvalid)
	case spec.Hostname != "" && !spec.Pause:
		return nil, fmt.Errorf("%w: a hostname needs a pause process (its UTS namespace holds it)", ErrInvalid)
	case spec.Join == spec.Name:
		return nil, fmt.Errorf("%w: a sandbox cannot join itself", ErrInvalid)
	}
	if spec.Join != "" {
		if err := checkName("sandbox", spec.Join); err != nil {
			return nil, err
		}
	}
	if err := checkAliases(spec); err != nil {
		return nil, err
	}
	seenNet := map[string]bool{}
	for _, a := range spec.Networks {
		if err := checkName("network", a.Network); err != nil {
			return nil, err
		}
		if seenNet[a.Network] {
			return nil, fmt.Errorf("%w: network %q given twice", ErrInvalid, a.Network)
		}
		seenNet[a.Network] = true
	}
	l, err := m.lock(ctx, "sandbox-"+spec.Name)
	if err != nil {
		return nil, err
	}
	// A create that failed before reserving, or whose rollback finished, leaves no lock file behind.
	// Otherwise the file stays: Recover repairs only intents whose lock file exists.
	clean := true
	defer func() {
		// Before reserving, the file may belong to an existing sandbox of this name, or to a
		// crashed operation's intent: it goes only if neither is there.
		l.Unlock(err != nil && clean && !m.sandboxKnown(context.WithoutCancel(ctx), spec.Name))
	}()
	var netNames []string
	for _, a := range spec.Networks {
		netNames = append(netNames, a.Network)
	}
	unlockNets, err := m.lockNetworksShared(ctx, netNames...)
	if err != nil {
		return nil, err
	}
	defer unlockNets()

	rec, nets, err := m.reserveSandbox(ctx, spec)
	if err != nil {
		return nil, err
	}
	// From here a failure rolls back; the rollback must run even if ctx is what failed.
	rollback := func(cause error) error {
		if rerr := m.teardownSandbox(context.WithoutCancel(ctx), rec); rerr != nil {
			clean = false
			return errors.Join(cause, rerr)
		}
		return cause
	}
	m.step(StepSandboxReserved)
	if err := m.plumbSandbox(ctx, rec, nets, spec.Pause, spec.Hostname); err != nil {
		return nil, rollback(err)
	}
	if err := m.publishPorts(ctx, rec, nets); err != nil {
		return nil, rollback(err)
	}
	m.step(StepSandboxComplete)
	// No compare needed: the sandbox lock keeps everyone else off this record.
	err = m.rt.Txn(ctx, nil, append([]store.Op{
		store.Put(keySandboxes+rec.Name, mustJSON(rec)),
		store.Del(intent.SandboxKey(rec.Name)),
	}, providedAllocations(rec.Name, rec.Endpoints, nets)...))
	if err != nil {
		return nil, rollback(err)
	}
	m.log.Info("sandbox created", "sandbox", rec.Name, "netns", rec.NetNS)
	return rec.public(), nil
}

// reserveSandbox writes the sandbox record, its addresses and a create intent in one transaction,
// retrying when a concurrent writer got there first.
func (m *Manager) reserveSandbox(ctx context.Context, spec SandboxSpec) (*sandboxRecord, []*netState, error) {
	// Once, not per attempt: it lists every sandbox, and it is not atomic with the create anyway.
	if err := m.refuseAliasCollision(ctx, spec); err != nil {
		return nil, nil, err
	}
	for attempt := 0; ; attempt++ {
		rec, nets, cmps, ops, release, err := m.planSandbox(ctx, spec)
		if err != nil {
			if errors.Is(err, ErrExists) && m.sandboxExists(ctx, spec.Name) {
				// "port taken by sandbox X" when X is the very name asked for: say what matters.
				err = fmt.Errorf("%w: a sandbox named %q exists", ErrExists, spec.Name)
			}
			return nil, nil, err
		}
		err = m.rt.Txn(ctx, cmps, ops)
		release()
		if err == nil {
			return rec, nets, nil
		}
		if m.sandboxExists(ctx, spec.Name) {
			return nil, nil, fmt.Errorf("%w: a sandbox named %q exists", ErrExists, spec.Name)
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= 50 {
			return nil, nil, err
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(time.Duration(rand.IntN(2000)+200) * time.Microsecond):
		}
	}
}

func (m *Manager) sandboxExists(ctx context.Context, name string) bool {
	_, err := m.rt.Get(ctx, keySandboxes+name)
	return err == nil
}

// planSandbox reads what a create depends on and builds its transaction. release forgets the
// addresses it marked pending in this process.
func (m *Manager) planSandbox(ctx context.Context, spec SandboxSpec) (rec *sandboxRecord, nets []*netState, cmps []store.Cmp, ops []store.Op, release func(), err error) {
	release = func() {}
	// Whether the name is free is decided by the transaction's compare (see reserveSandbox).
	rec = &sandboxRecord{ID: newID(), Name: spec.Name, Mode: ModeNetNS, Labels: spec.Labels, Aliases: spec.Aliases, Created: time.Now().UTC(), WantPause: spec.Pause}
	rec.NetNS = m.netnsPath(spec.Name)
	cmps = []store.Cmp{store.Absent(keySandboxes + spec.Name), store.Absent(intent.SandboxKey(spec.Name))}

	switch {
	case spec.NetNS != "":
		ns, err := sandbox.Open(spec.NetNS)
		if err != nil {
			// Keep the cause (errors.Is finds os.ErrNotExist or sandbox.ErrNotNetNS).
			kind := ErrNotFound
			if !errors.Is(err, os.ErrNotExist) {
				kind = ErrInvalid
			}
			return nil, nil, nil, nil, release, fmt.Errorf("%w: %w", kind, err)
		}
		ns.Close()
		rec.Mode, rec.NetNS = ModeExternal, spec.NetNS
	case spec.Host:
		rec.NetNS, rec.Mode = m.hostNamespace(), ModeHost
	case spec.Join != "":
		tkv, err := m.rt.Get(ctx, keySandboxes+spec.Join)
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil, nil, nil, release, fmt.Errorf("%w: no sandbox named %q to join", ErrNotFound, spec.Join)
		}
		if err != nil {
			return nil, nil, nil, nil, release, err
		}
		var target sandboxRecord
		if err := json.Unmarshal(tkv.Value, &target); err != nil {
			return nil, nil, nil, nil, release, err
		}
		if _, err := m.rt.Get(ctx, intent.SandboxKey(spec.Join)); err == nil {
			return nil, nil, nil, nil, release, fmt.Errorf("%w: sandbox %q is being created or deleted", ErrBusy, spec.Join)
		}
		if rec.NetNS, err = joinNamespace(target.NetNS); err != nil {
			return nil, nil, nil, nil, release, err
		}
		rec.Mode, rec.Join = ModeLink, target.Name
		// Re-writing the target bumps its revision, so a concurrent delete of it fails its compare.
		cmps = append(cmps, store.Cmp{Key: tkv.Key, Rev: tkv.Rev}, store.Absent(intent.SandboxKey(spec.Join)))
		ops = append(ops, store.Put(tkv.Key, tkv.Value), store.Put(keyJoins+spec.Join+"/"+spec.Name, nil))
	}

	var pend []string
	release = func() { m.ipam.Release(pend...) }
	for i, as := range spec.Networks {
		ns, err := m.readNetwork(ctx, as.Network)
		if err != nil {
			return nil, nil, nil, nil, release, err
		}
		nets = append(nets, ns)
		ep := endpointRecord{ID: newID(), Network: as.Network, IfName: as.IfName, MAC: as.MAC, MTU: ns.rec.MTU, Net: ns.rec.snapshot()}
		if ep.IfName == "" {
			ep.IfName = "eth" + strconv.Itoa(i)
		}
		alloc, err := m.allocate(ctx, ns.rec, as.IPs, spec.Name)
		if err != nil {
			return nil, nil, nil, nil, release, err
		}
		pend = append(pend, alloc.Keys...)
		ep.Addrs = alloc.Addrs
		ep.Gateways = gatewayOffer(ns.rec, rec.Endpoints)
		de := ep.driverEndpoint(spec.Name)
		if err := ns.drv.PrepareEndpoint(ns.rec.driverNetwork(), de); err != nil {
			return nil, nil, nil, nil, release, err
		}
		ep.HostName, ep.MTU, ep.Routes = de.HostName, de.MTU, de.Routes
		cmps, ops = append(cmps, alloc.Cmps...), append(ops, alloc.Ops...)
		rec.Endpoints = append(rec.Endpoints, ep)
	}
	ifs := map[string]bool{}
	for _, e := range rec.Endpoints {
		if ifs[e.IfName] {
			return nil, nil, nil, nil, release, fmt.Errorf("%w: interface name %q given twice", ErrInvalid, e.IfName)
		}
		ifs[e.IfName] = true
	}
	pcmps, pops, err := m.planPorts(ctx, spec, rec, nets)
	if err != nil {
		return nil, nil, nil, nil, release, err
	}
	cmps, ops = append(cmps, pcmps...), append(ops, pops...)
	ops = append(ops,
		store.Put(keySandboxes+spec.Name, mustJSON(rec)),
		intent.Put(intent.SandboxKey(spec.Name), intent.Intent{Kind: intent.Create}))
	return rec, nets, cmps, ops, release, nil
}

// sandboxKnown reports whether the store has a record or an intent for the name (or cannot tell).
func (m *Manager) sandboxKnown(ctx context.Context, name string) bool {
	for _, k := range []string{keySandboxes + name, intent.SandboxKey(name)} {
		if _, err := m.rt.Get(ctx, k); !errors.Is(err, store.ErrNotFound) {
			return true
		}
	}
	return false
}

// requestedMode is the mode a spec asks for.
func requestedMode(spec SandboxSpec) string {
	switch {
	case spec.Host:
		return ModeHost
	case spec.Join != "":
		return ModeLink
	case spec.NetNS != "":
		return ModeExternal
	}
	return ModeNetNS
}

// allocate chooses one address per subnet of the network (ipam.Allocator: the requested static one
// for its family, else the next free one after this process's cursor) for the sandbox owner. The chosen
// keys stay pending in m.ipam until the caller releases them, after the transaction that commits the
// allocation's Cmps and Ops with the sandbox record; the store's compare decides between processes.
// A network without subnets in netmgr (its driver assigns the addresses) gets no allocation.
func (m *Manager) allocate(ctx context.Context, rec *networkRecord, static []netip.Addr, owner string) (*ipam.Allocation, error) {
	if len(rec.Subnets) == 0 {
		if len(static) > 0 {
			return nil, fmt.Errorf("%w: network %q has no subnets in netmgr (its driver assigns the addresses); static addresses cannot be given", ErrInvalid, rec.Name)
		}
		return &ipam.Allocation{}, nil
	}
	pools := make([]ipam.Pool, len(rec.Subnets))
	for i, sn := range rec.Subnets {
		pools[i] = ipam.Pool{Subnet: sn, Gateway: rec.Gateways[i]}
	}
	return m.ipam.Allocate(ctx, m.rt, ipam.Request{
		Name:     fmt.Sprintf("network %q", rec.Name),
		Prefix:   ipamPrefix(rec.Name),
		Pools:    pools,
		Reserved: m.reservedAddrs(rec),
		Static:   static,
		Owner:    []byte(owner),
	})
}

// plumbSandbox creates the kernel side of a reserved sandbox.
func (m *Manager) plumbSandbox(ctx context.Context, rec *sandboxRecord, nets []*netState, pause bool, hostname string) error {
	var ns *sandbox.NetNS
	var err error
	switch rec.Mode {
	case ModeNetNS:
		ns, err = sandbox.Create(rec.NetNS)
	case ModeExternal:
		ns, err = sandbox.Open(rec.NetNS)
	default:
		return nil
	}
	if err != nil {
		return err
	}
	defer ns.Close()
	m.step(StepSandboxNetNS)
	for i := range rec.Endpoints {
		e := &rec.Endpoints[i]
		de := e.driverEndpoint(rec.Name)
		if err := nets[i].drv.Attach(ctx, nets[i].rec.driverNetwork(), de, ns); err != nil {
			return err
		}
		adoptAttached(rec.Endpoints[i:], de, nets[i])
		m.step(StepSandboxAttached)
	}
	if pause {
		p, err := m.startPause(rec.Name, hostname, ns)
		if err != nil {
			return err
		}
		rec.Pause = p
	}
	return nil
}

// teardownSandbox undoes everything a sandbox record names: pause process, endpoints, namespace pin,
// addresses, join marks and the record itself. It is idempotent and works on half-created sandboxes.
func (m *Manager) teardownSandbox(ctx context.Context, rec *sandboxRecord) error {
	var errs []error
	m.stopPause(rec)
	var ns *sandbox.NetNS
	if rec.hasInterfaces() {
		ns, _ = sandbox.Open(rec.NetNS) // nil when the namespace is already gone
	}
	if err := m.unpublishPorts(ctx, rec); err != nil {
		errs = append(errs, err)
	}
	for i := range rec.Endpoints {
		e := &rec.Endpoints[i]
		if err := m.detachEndpoint(ctx, rec.Name, e, ns, drivers.DetachOptions{NamespaceGoing: rec.owned() || rec.going}); err != nil {
			errs = append(errs, err)
		}
	}
	if ns != nil {
		ns.Close()
	}
	m.step(StepSandboxDetached)
	if rec.owned() {
		if err := sandbox.Remove(rec.NetNS); err != nil {
			errs = append(errs, err)
		}
	}
	m.step(StepSandboxUnpinned)
	if len(errs) > 0 {
		// Keep the records (and the intent) so that gc can finish the job.
		return errors.Join(errs...)
	}
	ops := []store.Op{store.Del(keySandboxes + rec.Name), store.Del(intent.SandboxKey(rec.Name))}
	for _, e := range rec.Endpoints {
		for _, a := range e.Addrs {
			ops = append(ops, store.Del(ipamKey(e.Network, a.Addr())))
		}
	}
	if rec.Join != "" {
		ops = append(ops, store.Del(keyJoins+rec.Join+"/"+rec.Name))
	}
	ops = append(ops, portReleaseOps(rec)...)
	return m.rt.Txn(ctx, nil, ops)
}

// DeleteOption modifies DeleteSandbox.
type DeleteOption func(*sandboxRecord)

// NamespaceGoing tells DeleteSandbox that the caller itself removes the interfaces in the sandbox's
// external namespace, or the namespace with them, as a CNI runtime does right after DEL. Drivers then
// undo only what lives outside the namespace, as for namespaces netmgr removes: the bridge driver sets
// the host end down, which cuts the sandbox off at once, instead of deleting the veth (about 20 ms).
// A host end that outlives its namespace's interfaces is removed by Recover.
func NamespaceGoing() DeleteOption { return func(r *sandboxRecord) { r.going = true } }

// DeleteSandbox removes a sandbox, its attachments, addresses and namespace. It is idempotent: deleting a
// sandbox that does not exist returns nil.
func (m *Manager) DeleteSandbox(ctx context.Context, name string, opts ...DeleteOption) error {
	return opErr("delete", "sandbox", name, m.deleteSandbox(ctx, name, opts))
}

func (m *Manager) deleteSandbox(ctx context.Context, name string, opts []DeleteOption) error {
	if err := checkName("sandbox", name); err != nil {
		return err
	}
	l, err := m.lock(ctx, "sandbox-"+name)
	if err != nil {
		return err
	}
	removed := false
	defer func() { l.Unlock(removed) }()
	kv, err := m.rt.Get(ctx, keySandboxes+name)
	if errors.Is(err, store.ErrNotFound) {
		// Do not leave a lock file for a sandbox that never existed, but keep the one a crashed
		// operation's intent needs for its repair.
		removed = !m.sandboxKnown(ctx, name)
		return nil
	}
	if err != nil {
		return err
	}
	var rec sandboxRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return fmt.Errorf("decode sandbox record: %w", err)
	}
	for _, o := range opts {
		o(&rec)
	}
	joiners, _, err := m.rt.List(ctx, keyJoins+name+"/")
	if err != nil {
		return err
	}
	if len(joiners) > 0 {
		var names []string
		for _, j := range joiners {
			names = append(names, lastSegment(j.Key))
		}
		return fmt.Errorf("%w: sandbox(es) %s share its namespace; remove them first", ErrInUse, strings.Join(names, ", "))
	}
	// Re-writing the record bumps its revision so that a concurrent join fails its compare.
	err = m.rt.Txn(ctx, []store.Cmp{{Key: kv.Key, Rev: kv.Rev}}, []store.Op{
		store.Put(kv.Key, kv.Value),
		intent.Put(intent.SandboxKey(name), intent.Intent{Kind: intent.Delete}),
	})
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%w: sandbox changed concurrently; try again", ErrBusy)
	}
	if err != nil {
		return err
	}
	m.step(StepSandboxDeleting)
	if err := m.teardownSandbox(ctx, &rec); err != nil {
		return err
	}
	removed = true
	m.log.Info("sandbox deleted", "sandbox", name)
	return nil
}

// Sandbox returns one sandbox.
func (m *Manager) Sandbox(ctx context.Context, name string) (*Sandbox, error) {
	if err := checkName("sandbox", name); err != nil {
		return nil, opErr("inspect", "sandbox", name, err)
	}
	kv, err := m.rt.Get(ctx, keySandboxes+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, opErr("inspect", "sandbox", name, fmt.Errorf("%w: no sandbox named %q", ErrNotFound, name))
	}
	if err != nil {
		return nil, err
	}
	var rec sandboxRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, err
	}
	return rec.public(), nil
}

// Sandboxes returns every sandbox, sorted by name.
func (m *Manager) Sandboxes(ctx context.Context) ([]*Sandbox, error) {
	recs, err := m.sandboxRecords(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*Sandbox, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.public())
	}
	return out, nil
}

func (m *Manager) sandboxRecords(ctx context.Context) ([]*sandboxRecord, error) {
	kvs, _, err := m.rt.List(ctx, keySandboxes)
	if err != nil {
		return nil, err
	}
	out := make([]*sandboxRecord, 0, len(kvs))
	for _, kv := range kvs {
		var r sandboxRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			m.log.Warn("skipping undecodable sandbox record", "key", kv.Key, "error", err)
			continue
		}
		out = append(out, &r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// checkAliases checks a spec's aliases: names as sandbox names are (each a DNS name), none twice,
// none the sandbox's own name, and only on a sandbox with networks of its own.
func checkAliases(spec SandboxSpec) error {
	seen := map[string]bool{}
	for _, a := range spec.Aliases {
		if err := checkName("alias", a); err != nil {
			return err
		}
		la := strings.ToLower(a)
		if seen[la] || strings.EqualFold(a, spec.Name) {
			return fmt.Errorf("%w: alias %q given twice (or equal to the sandbox's name)", ErrInvalid, a)
		}
		seen[la] = true
	}
	if len(spec.Aliases) > 0 && len(spec.Networks) == 0 {
		return fmt.Errorf("%w: aliases are names on the sandbox's networks: give --network", ErrInvalid)
	}
	return nil
}

// refuseAliasCollision refuses an alias that another sandbox on one of the spec's networks has as
// its name or alias (DNS names are case-insensitive). Only creates with aliases pay for the list.
// The check is not atomic with the create: two concurrent creates may still take one name, and then
// a sandbox's name wins over an alias in the DNS answers.
func (m *Manager) refuseAliasCollision(ctx context.Context, spec SandboxSpec) error {
	if len(spec.Aliases) == 0 {
		return nil
	}
	recs, err := m.sandboxRecords(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.Name == spec.Name {
			continue
		}
		var shared string
		for _, e := range r.Endpoints {
			for _, a := range spec.Networks {
				if e.Network == a.Network {
					shared = a.Network
				}
			}
		}
		if shared == "" {
			continue
		}
		for _, a := range spec.Aliases {
			if strings.EqualFold(a, r.Name) {
				return fmt.Errorf("%w: alias %q is the name of sandbox %q on network %q", ErrExists, a, r.Name, shared)
			}
			for _, o := range r.Aliases {
				if strings.EqualFold(a, o) {
					return fmt.Errorf("%w: alias %q is an alias of sandbox %q on network %q", ErrExists, a, r.Name, shared)
				}
			}
		}
	}
	return nil
}
