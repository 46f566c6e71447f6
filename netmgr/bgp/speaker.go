package bgp

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	bgppkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/netmgr/netmgr/drivers/routed"
	"github.com/netmgr/netmgr/netmgr/agent"
	"github.com/netmgr/netmgr/netmgr/service"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// Controller is the speaker, an agent.Controller.
type Controller struct {
	cfg Config

	mu       sync.Mutex
	status   Status
	dialErrs map[string]string // peer address -> last connection error (from gobgp's log)
	cips     []netip.Addr      // cluster IPs, when advertised
}

// New checks cfg (Validate) and returns the speaker; it touches nothing until Run.
func New(cfg Config) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Controller{cfg: cfg, dialErrs: map[string]string{}}, nil
}

// Name implements agent.Controller.
func (c *Controller) Name() string { return "bgp" }

// Status is the speaker's last status (also published under KeyStatus).
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Peers = slices.Clone(s.Peers)
	return s
}

// markerName is the speaker's file in the Manager's run dir: present while the forwarding state it
// advertised may still be in place (the run dir is gone after a reboot), so that a speaker started
// again announces itself restarting (RFC 4724's restart flag) and the routers keep its routes.
const markerName = "bgp-speaker"

type advert struct {
	prefix netip.Prefix
	nh     netip.Addr
}

// speaker is one Run's state.
type speaker struct {
	c         *Controller
	a         *agent.Agent
	s         *server.BgpServer
	log       *slog.Logger
	ns        *sandbox.NetNS
	kern      *kernel
	routerID  netip.Addr
	nh6       netip.Addr
	start     time.Time
	adverts   map[advert][]byte // -> the UUID gobgp gave the path
	since     map[string]time.Time
	evState   map[string]bgppkt.FSMState // the watcher's view of each session (its goroutine only)
	state     map[string]string
	lastPub   []byte
	lastLease store.LeaseID
	warning   string
	poke      chan struct{}
	stopped   bool
}

// Run implements agent.Controller: it starts the speaker, peers, advertises and installs learned
// routes until ctx ends.
func (c *Controller) Run(ctx context.Context, a *agent.Agent) error {
	// Everything Run starts (gobgp's watcher, the services follower) ends with it, also on an error.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	log := a.Logger().With("controller", "bgp")
	m := a.Manager()
	if err := sameNetNS(m.HostNetNS()); err != nil {
		return err
	}
	routerID := c.cfg.RouterID
	if !routerID.IsValid() {
		if u := a.Underlay(); u.Is4() {
			routerID = u
		} else {
			return fmt.Errorf("%w: BGP needs a router ID, an IPv4 address (--bgp-router-id, Config.RouterID): the underlay address %v is not one", ErrInvalid, a.Underlay())
		}
	}
	ns, err := sandbox.Open(m.HostNetNS())
	if err != nil {
		return fmt.Errorf("bgp: open host namespace: %w", err)
	}
	defer ns.Close()
	h, err := ns.NewHandle()
	if err != nil {
		return fmt.Errorf("bgp: netlink: %w", err)
	}
	defer h.Close()

	marker := filepath.Join(m.RunDir(), markerName)
	_, statErr := os.Stat(marker)
	// Restarting: the last run's forwarding state may still be in place (a marker, and networks
	// joined; a store error counts as joined, so that a hiccup never makes the routers flush).
	js, jerr := m.JoinedNetworks(ctx)
	restarting := statErr == nil && (jerr != nil || len(js) > 0)
	if err := os.WriteFile(marker, []byte(routerID.String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("bgp: %w", err)
	}

	sp := &speaker{c: c, a: a, log: log, ns: ns, kern: &kernel{h: h, log: log}, routerID: routerID, start: time.Now(),
		adverts: map[advert][]byte{}, since: map[string]time.Time{}, state: map[string]string{}, evState: map[string]bgppkt.FSMState{}, poke: make(chan struct{}, 1)}
	sp.nh6 = c.nextHop6(h, a.Underlay())

	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelDebug) // the dial errors are debug lines: the handler keeps them and forwards by log's level
	newServer := func() *server.BgpServer {
		s := server.NewBgpServer(server.LoggerOption(slog.New(&gobgpLog{next: log.Handler(), onDialErr: c.setDialErr}), lvl))
		go s.Serve()
		return s
	}
	sp.s = newServer()
	defer func() {
		if !sp.stopped {
			sp.s.Stop()
		}
	}()

	// Listen on the families of the peers only (gobgp's default, 0.0.0.0 and ::, fails as a whole
	// where IPv6 is off, after the IPv4 listener is open).
	global := &api.Global{Asn: c.cfg.ASN, RouterId: routerID.String(), ListenPort: int32(c.cfg.ListenPort), ListenAddresses: c.listenAddresses()}
	if err := sp.s.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		if c.cfg.ListenPort < 0 {
			return fmt.Errorf("bgp: start: %w", err)
		}
		// No port to listen on (another speaker has 179): connect out only, and say so. A fresh
		// server: the failed start may have kept a listener of one family.
		sp.warning = fmt.Sprintf("cannot listen on port %d (%v): connecting out only", c.cfg.ListenPort, err)
		log.Warn("bgp listen", "error", err)
		sp.s.Stop()
		sp.s = newServer()
		global.ListenPort = -1
		if err := sp.s.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
			return fmt.Errorf("bgp: start: %w", err)
		}
	}
	if err := sp.exportOnlyLocal(ctx); err != nil {
		return fmt.Errorf("bgp: export policy: %w", err)
	}
	if err := sp.s.WatchEvent(ctx, server.WatchEventMessageCallbacks{
		OnPeerUpdate: func(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			if ev.Type == apiutil.PEER_EVENT_STATE {
				sp.peerEvent(ev.Peer.State)
			}
			sp.kick()
		},
		OnBestPath: func([]*apiutil.Path, time.Time) { sp.kick() },
	}, server.WatchPeer(), server.WatchBestPath(false)); err != nil {
		return fmt.Errorf("bgp: watch: %w", err)
	}
	if c.cfg.AdvertiseClusterIPs {
		go c.followServices(ctx, a, sp.kick, log)
	}
	// Networks made or removed (a local routed network with routing=bgp is advertised at once; on
	// one host the agent has no loop that would say so).
	go func() {
		err := store.Follow(ctx, m.NetworkStore(), "networks/", func(store.Update) error { sp.kick(); return nil })
		if err != nil && ctx.Err() == nil {
			log.Warn("bgp: follow networks", "error", err)
		}
	}()
	// The node's routes go into the table before any session opens, so that the first UPDATE (and,
	// restarting, the one after the routers' End-of-RIB) carries them all.
	sp.reconcile(ctx)
	for _, p := range c.cfg.Peers {
		if err := sp.s.AddPeer(ctx, &api.AddPeerRequest{Peer: c.peerConf(p, restarting)}); err != nil {
			return fmt.Errorf("bgp: peer %s: %w", p, err)
		}
	}
	log.Info("bgp speaker started", "asn", c.cfg.ASN, "router_id", routerID, "peers", len(c.cfg.Peers), "restarting", restarting, "listen", global.ListenPort)

	changes, unsub := a.Subscribe()
	defer unsub()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			sp.stop()
			return nil
		case <-changes:
		case <-sp.poke:
		case <-tick.C:
		}
		sp.reconcile(ctx)
	}
}

// peerEvent logs a session's changes and keeps why it went down, for the status: the reason of a
// fall back to idle (hold timer expired, a bad message). gobgp keeps no detail of a NOTIFICATION
// the peer sends while the session opens (a wrong AS number: BIRD's "Bad peer AS"), only
// "invalid-msg", so that one is said in words a user can act on.
func (sp *speaker) peerEvent(st apiutil.PeerState) {
	addr := st.NeighborAddress.String()
	prev := sp.evState[addr]
	sp.evState[addr] = st.SessionState
	switch {
	case st.SessionState == bgppkt.BGP_FSM_ESTABLISHED:
		sp.log.Info("bgp session established", "peer", addr, "asn", st.PeerASN)
	case st.SessionState == bgppkt.BGP_FSM_IDLE && st.DisconnectMessage != "" && st.DisconnectMessage != "idle-hold-timer-expired":
		msg := "session closed: " + st.DisconnectMessage
		if st.DisconnectMessage == "invalid-msg" && (prev == bgppkt.BGP_FSM_OPENSENT || prev == bgppkt.BGP_FSM_OPENCONFIRM) {
			msg = fmt.Sprintf("the peer closed the session while it opened: does the router's configuration for this node expect AS %d from %s?", sp.c.cfg.ASN, sp.a.Underlay())
		}
		sp.c.setReason(addr, msg, false)
		sp.log.Warn("bgp session down (retrying)", "peer", addr, "reason", msg)
	}
}

func (sp *speaker) kick() {
	select {
	case sp.poke <- struct{}{}:
	default:
	}
}

// stop closes the sessions: without NOTIFICATION (graceful restart) unless WithdrawOnStop.
func (sp *speaker) stop() {
	c := sp.c
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c.cfg.WithdrawOnStop {
		_ = sp.s.DeletePath(apiutil.DeletePathRequest{DeleteAll: true})
		_ = os.Remove(filepath.Join(sp.a.Manager().RunDir(), markerName))
		_ = sp.a.Cluster().Txn(ctx, nil, []store.Op{store.Del(KeyStatus + sp.a.Node())})
	}
	if err := sp.s.StopBgp(ctx, &api.StopBgpRequest{AllowGracefulRestart: !c.cfg.WithdrawOnStop}); err != nil {
		sp.log.Warn("bgp stop", "error", err)
	}
	sp.stopped = true
	sp.log.Info("bgp speaker stopped", "withdrawn", c.cfg.WithdrawOnStop)
}

func family(p netip.Prefix) *api.Family {
	if p.Addr().Is4() {
		return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
}

func (c *Controller) peerConf(p Peer, restarting bool) *api.Peer {
	asn := p.ASN
	if asn == 0 {
		asn = c.cfg.ASN
	}
	hold := uint64(c.cfg.HoldTime / time.Second)
	rt := uint32(c.cfg.RestartTime / time.Second)
	// One family per session, the peer address's (IPv4 routes over IPv4 sessions, IPv6 over IPv6,
	// as Calico peers): a family the router has not configured is never sent to it (gobgp sends
	// End-of-RIB for every configured family after a restart, and BIRD refuses an unexpected one).
	f := family(netip.MustParsePrefix("0.0.0.0/0"))
	if p.Addr.Is6() {
		f = family(netip.MustParsePrefix("::/0"))
	}
	afs := []*api.AfiSafi{{
		Config:            &api.AfiSafiConfig{Family: f, Enabled: true},
		MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
	}}
	return &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: p.Addr.String(), PeerAsn: asn},
		Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: hold, KeepaliveInterval: max(1, hold/3), ConnectRetry: uint64(c.cfg.ConnectRetry / time.Second), IdleHoldTimeAfterReset: 1}},
		Transport: &api.Transport{RemotePort: uint32(c.cfg.PeerPort)},
		GracefulRestart: &api.GracefulRestart{Enabled: true, RestartTime: rt, LocalRestarting: restarting,
			// A restarting speaker holds its updates until every peer's End-of-RIB or this. The node
			// originates its routes (none depends on what it learns), so it need not wait long: a
			// peer that does not answer holds the others' updates at most 5 s (or half the restart
			// time, when shorter), well inside the time the routers keep the old ones.
			DeferralTime: min(max(1, rt/2), 5)},
		AfiSafis: afs,
	}
}

// exportOnlyLocal makes the node no transit: only the paths it originates go to its peers.
func (sp *speaker) exportOnlyLocal(ctx context.Context) error {
	pol := &api.Policy{Name: "netmgr-local-only", Statements: []*api.Statement{{
		Name:       "netmgr-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
	}}}
	if err := sp.s.AddPolicy(ctx, &api.AddPolicyRequest{Policy: pol}); err != nil {
		return err
	}
	return sp.s.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name: "global", Direction: api.PolicyDirection_POLICY_DIRECTION_EXPORT,
		Policies: []*api.Policy{{Name: pol.Name}}, DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT,
	}})
}

// reconcile advertises what the node should, installs what it learned, and publishes the status.
func (sp *speaker) reconcile(ctx context.Context) {
	want, cidrs, own, ok := sp.wanted(ctx)
	sp.advertise(want)
	if sp.kern != nil && ok { // unknown networks: the learned routes stay as they are
		learned := sp.learned(cidrs, own)
		n, err := sp.kern.sync(learned, sp.settled())
		if err != nil {
			sp.log.Warn("bgp kernel routes (retrying)", "error", err)
		}
		sp.c.mu.Lock()
		sp.c.status.Installed = n
		sp.c.mu.Unlock()
	}
	sp.publish(ctx, want)
}

// wanted are the prefixes this node originates (its subnets of every routed-global network, the
// subnets of its local routed networks with routing=bgp, and the cluster IPs when asked), the cluster CIDRs whose learned routes may go into the kernel, and
// the node's own subnets.
func (sp *speaker) wanted(ctx context.Context) (map[advert]bool, []netip.Prefix, map[netip.Prefix]bool, bool) {
	want := map[advert]bool{}
	own := map[netip.Prefix]bool{}
	var cidrs []netip.Prefix
	js, err := sp.a.Manager().JoinedNetworks(ctx)
	if err != nil {
		sp.log.Warn("bgp: list joined networks (retrying)", "error", err)
		// Keep advertising what was advertised: a store hiccup is no reason to withdraw.
		for ad := range sp.adverts {
			want[ad] = true
		}
		return want, nil, own, false
	}
	var warn []string
	v4, v6 := false, false
	for _, p := range sp.c.cfg.Peers {
		v4, v6 = v4 || p.Addr.Is4(), v6 || p.Addr.Is6()
	}
	noPeer := map[bool]bool{}
	add := func(p netip.Prefix) {
		if (p.Addr().Is4() && !v4) || (p.Addr().Is6() && !v6) {
			// Each session carries its peer address's family only.
			if !noPeer[p.Addr().Is4()] {
				noPeer[p.Addr().Is4()] = true
				warn = append(warn, fmt.Sprintf("%s subnets not advertised: no %s peer", fam(p), fam(p)))
			}
			return
		}
		nh := sp.nextHop(p)
		if !nh.IsValid() {
			warn = append(warn, fmt.Sprintf("%s not advertised: no %s address to give as its next hop", p, fam(p)))
			return
		}
		want[advert{prefix: p, nh: nh}] = true
	}
	for _, j := range js {
		if j.Driver != routed.GlobalName {
			continue
		}
		cidrs = append(cidrs, j.CIDRs...)
		for _, sn := range j.View.Subnets {
			own[sn.Masked()] = true
			add(sn.Masked())
		}
	}
	// This host's local routed networks that ask for it (routing=bgp: their subnets are unique
	// among the routers' hosts, the user's choice), e.g. one host on bbolt peering with its rack's
	// router.
	nets, err := sp.a.Manager().Networks(ctx)
	if err != nil {
		sp.log.Warn("bgp: list networks (retrying)", "error", err)
		for ad := range sp.adverts {
			want[ad] = true
		}
		return want, nil, own, false
	}
	for _, n := range nets {
		if n.Driver != routed.Name || n.Scope == "global" || (n.Node != "" && n.Node != sp.a.Node()) || n.Internal || n.Options[routed.OptRouting] != routed.RoutingBGP {
			continue
		}
		for _, sn := range n.Subnets {
			own[sn.Masked()] = true
			add(sn.Masked())
		}
	}
	sp.c.mu.Lock()
	cips := slices.Clone(sp.c.cips)
	sp.c.mu.Unlock()
	for _, ip := range cips {
		add(netip.PrefixFrom(ip, ip.BitLen()))
	}
	w := sp.warning
	if len(warn) > 0 {
		w = strings.Join(append([]string{w}, warn...), "; ")
		w = strings.TrimPrefix(w, "; ")
	}
	sp.c.mu.Lock()
	sp.c.status.Warning = w
	sp.c.mu.Unlock()
	return want, cidrs, own, true
}

func fam(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func (sp *speaker) nextHop(p netip.Prefix) netip.Addr {
	u := sp.a.Underlay()
	if p.Addr().Is4() {
		if u.Is4() {
			return u
		}
		return netip.Addr{}
	}
	if u.Is6() {
		return u
	}
	return sp.nh6
}

// advertise adds and deletes the node's paths to match want.
func (sp *speaker) advertise(want map[advert]bool) {
	for ad := range sp.adverts {
		if want[ad] {
			continue
		}
		if err := sp.s.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{pathOf(ad)}}); err != nil {
			sp.log.Warn("bgp withdraw (retrying)", "prefix", ad.prefix, "error", err)
			continue
		}
		delete(sp.adverts, ad)
		sp.log.Info("bgp withdrawn", "prefix", ad.prefix)
	}
	for ad := range want {
		if _, ok := sp.adverts[ad]; ok {
			continue
		}
		if _, err := sp.s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{pathOf(ad)}}); err != nil {
			sp.log.Warn("bgp advertise (retrying)", "prefix", ad.prefix, "error", err)
			continue
		}
		sp.adverts[ad] = nil
		sp.log.Info("bgp advertised", "prefix", ad.prefix, "next_hop", ad.nh)
	}
}

func pathOf(ad advert) *apiutil.Path {
	nlri, _ := bgppkt.NewIPAddrPrefix(ad.prefix)
	attrs := []bgppkt.PathAttributeInterface{bgppkt.NewPathAttributeOrigin(bgppkt.BGP_ORIGIN_ATTR_TYPE_IGP)}
	f := bgppkt.RF_IPv4_UC
	if ad.prefix.Addr().Is4() {
		nh, _ := bgppkt.NewPathAttributeNextHop(ad.nh)
		attrs = append(attrs, nh)
	} else {
		f = bgppkt.RF_IPv6_UC
		mp, _ := bgppkt.NewPathAttributeMpReachNLRI(f, []bgppkt.PathNLRI{{NLRI: nlri}}, ad.nh)
		attrs = append(attrs, mp)
	}
	return &apiutil.Path{Family: f, Nlri: nlri, Attrs: attrs}
}

// learned are the best paths from peers for prefixes inside the routed networks' cluster CIDRs
// that are not this node's own: prefix -> next hop.
func (sp *speaker) learned(cidrs []netip.Prefix, own map[netip.Prefix]bool) map[netip.Prefix]learnedRoute {
	out := map[netip.Prefix]learnedRoute{}
	if len(cidrs) == 0 {
		return out
	}
	for _, f := range []bgppkt.Family{bgppkt.RF_IPv4_UC, bgppkt.RF_IPv6_UC} {
		err := sp.s.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: f}, func(nlri bgppkt.NLRI, paths []*apiutil.Path) {
			pfx, ok := prefixOfNLRI(nlri)
			if !ok || own[pfx] || !slices.ContainsFunc(cidrs, func(c netip.Prefix) bool { return c.Overlaps(pfx) && c.Bits() <= pfx.Bits() }) {
				return
			}
			for _, p := range paths {
				if !p.Best || p.Withdrawal || !p.PeerAddress.IsValid() || p.PeerAddress.IsUnspecified() {
					continue
				}
				if nh := nextHopOf(p); nh.IsValid() && !nh.IsUnspecified() {
					out[pfx] = learnedRoute{nh: nh, peer: p.PeerAddress}
				}
			}
		})
		if err != nil {
			sp.log.Debug("bgp list paths", "error", err)
		}
	}
	return out
}

func prefixOfNLRI(n bgppkt.NLRI) (netip.Prefix, bool) {
	switch v := n.(type) {
	case *bgppkt.IPAddrPrefix:
		return v.Prefix.Masked(), true
	}
	p, err := netip.ParsePrefix(n.String())
	return p.Masked(), err == nil
}

func nextHopOf(p *apiutil.Path) netip.Addr {
	for _, a := range p.Attrs {
		switch v := a.(type) {
		case *bgppkt.PathAttributeNextHop:
			return v.Value
		case *bgppkt.PathAttributeMpReachNLRI:
			if (!v.Nexthop.IsValid() || v.Nexthop.IsUnspecified()) && v.LinkLocalNexthop.IsValid() {
				return v.LinkLocalNexthop
			}
			return v.Nexthop
		}
	}
	return netip.Addr{}
}

// settled reports whether learned routes from before a restart may be removed: every session is
// established (and has had a moment for its updates), or a hold time has passed since the start.
func (sp *speaker) settled() bool {
	if time.Since(sp.start) > sp.c.cfg.HoldTime {
		return true
	}
	for _, p := range sp.c.cfg.Peers {
		if sp.state[p.Addr.String()] != "established" || time.Since(sp.since[p.Addr.String()]) < time.Second {
			return false
		}
	}
	return true
}

// publish refreshes the status and writes it to the cluster store if it changed.
func (sp *speaker) publish(ctx context.Context, want map[advert]bool) {
	var peers []PeerStatus
	err := sp.s.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		addr := p.GetConf().GetNeighborAddress()
		ps := PeerStatus{State: stateName(p.GetState().GetSessionState())}
		ps.Peer.Addr, _ = netip.ParseAddr(addr)
		ps.Peer.ASN = p.GetConf().GetPeerAsn()
		if ps.State != sp.state[addr] {
			sp.state[addr] = ps.State
			sp.since[addr] = time.Now()
		}
		ps.Since = sp.since[addr]
		for _, af := range p.GetAfiSafis() {
			ps.Advertised += af.GetState().GetAdvertised()
			ps.Received += af.GetState().GetReceived()
		}
		if ps.State != "established" {
			sp.c.mu.Lock()
			ps.Error = sp.c.dialErrs[addr]
			sp.c.mu.Unlock()
			if msg := p.GetState().GetDisconnectMessage(); msg != "" && ps.Error == "" {
				ps.Error = msg
			}
		} else {
			sp.c.mu.Lock()
			delete(sp.c.dialErrs, addr)
			sp.c.mu.Unlock()
		}
		peers = append(peers, ps)
	})
	if err != nil {
		sp.log.Debug("bgp list peers", "error", err)
	}
	slices.SortFunc(peers, func(a, b PeerStatus) int { return a.Peer.Addr.Compare(b.Peer.Addr) })
	var adv []netip.Prefix
	for ad := range want {
		adv = append(adv, ad.prefix)
	}
	slices.SortFunc(adv, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	sp.c.mu.Lock()
	sp.c.status.Node, sp.c.status.ASN, sp.c.status.RouterID = sp.a.Node(), sp.c.cfg.ASN, sp.routerID
	sp.c.status.Peers, sp.c.status.Advertised = peers, adv
	st := sp.c.status
	sp.c.mu.Unlock()
	b, _ := json.Marshal(st)
	lease := sp.a.Lease()
	if lease == store.NoLease && !sp.a.Local() {
		return // the node's lease is being granted again: a key without it would outlive the node
	}
	if string(b) == string(sp.lastPub) && lease == sp.lastLease {
		return
	}
	op := store.Put(KeyStatus+sp.a.Node(), b)
	if lease != store.NoLease {
		op = store.PutWithLease(KeyStatus+sp.a.Node(), b, lease)
	}
	if err := sp.a.Cluster().Txn(ctx, nil, []store.Op{op}); err != nil {
		sp.log.Debug("bgp publish status (retrying)", "error", err)
		return
	}
	sp.lastPub, sp.lastLease = b, lease
}

// listenAddresses are the wildcard addresses of the peers' families.
func (c *Controller) listenAddresses() []string {
	var out []string
	for _, p := range c.cfg.Peers {
		a := "0.0.0.0"
		if p.Addr.Is6() {
			a = "::"
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func stateName(s api.PeerState_SessionState) string {
	n := strings.ToLower(strings.TrimPrefix(s.String(), "SESSION_STATE_"))
	if n == "unspecified" {
		return "idle"
	}
	return n
}

func (c *Controller) setDialErr(peer, msg string) { c.setReason(peer, msg, false) }

// setReason keeps why peer's session is not established; a weak reason does not replace one.
func (c *Controller) setReason(peer, msg string, weak bool) {
	c.mu.Lock()
	if !weak || c.dialErrs[peer] == "" {
		c.dialErrs[peer] = msg
	}
	c.mu.Unlock()
}

// followServices keeps the cluster IPs to advertise.
func (c *Controller) followServices(ctx context.Context, a *agent.Agent, poke func(), log *slog.Logger) {
	err := service.Watch(ctx, a.Cluster(), func(svcs []*service.Service) error {
		var ips []netip.Addr
		for _, s := range svcs {
			if s.ClusterIP.IsValid() {
				ips = append(ips, s.ClusterIP)
			}
		}
		c.mu.Lock()
		changed := !slices.Equal(ips, c.cips)
		c.cips = ips
		c.mu.Unlock()
		if changed {
			poke()
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		log.Warn("bgp: follow services", "error", err)
	}
}

// sameNetNS refuses a host namespace other than the process's: gobgp opens its sessions in the
// process's namespace.
func sameNetNS(host string) error {
	var a, b syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &a); err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	if err := syscall.Stat(host, &b); err != nil {
		return fmt.Errorf("bgp: host namespace %s: %w", host, err)
	}
	if a.Ino != b.Ino || a.Dev != b.Dev {
		return fmt.Errorf("%w: BGP sessions open in this process's network namespace, and the Manager's host namespace %s is another one: run the agent inside the host namespace (nsenter --net=%s)", ErrInvalid, host, host)
	}
	return nil
}

// gobgpLog forwards gobgp's log records to the agent's logger by its level, and keeps each peer's
// last connection error (a debug record of gobgp's) for the status.
type gobgpLog struct {
	next      slog.Handler
	key       string
	onDialErr func(peer, msg string)
}

func (g *gobgpLog) Enabled(context.Context, slog.Level) bool { return true }

func (g *gobgpLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "received notification" && g.key != "" {
		// The peer closed the session with a NOTIFICATION: its code says why (bad peer AS, hold
		// timer expired, administrative shutdown).
		var code, sub int64
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "Code":
				code = a.Value.Int64()
			case "Subcode":
				sub = a.Value.Int64()
			}
			return true
		})
		g.onDialErr(g.key, "the peer closed the session: "+bgppkt.NewNotificationErrorCode(uint8(code), uint8(sub)).String())
	}
	if r.Message == "failed to connect" && g.key != "" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "Error" {
				g.onDialErr(g.key, a.Value.String())
				return false
			}
			return true
		})
	}
	if g.next.Enabled(ctx, r.Level) {
		return g.next.Handle(ctx, r)
	}
	return nil
}

func (g *gobgpLog) WithAttrs(as []slog.Attr) slog.Handler {
	n := *g
	n.next = g.next.WithAttrs(as)
	for _, a := range as {
		if a.Key == "Key" {
			n.key = a.Value.String()
		}
	}
	return &n
}

func (g *gobgpLog) WithGroup(name string) slog.Handler {
	n := *g
	n.next = g.next.WithGroup(name)
	return &n
}
