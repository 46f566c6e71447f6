package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/sandbox"
)

// The checks of TestFaultInjection. Each compares the records podctl lists with what the kernel and
// the run dir hold, both ways, and reports every difference as a problem of one named check:
//
//	records          a sandbox on a network that does not exist; a network's sandbox list differs
//	                 from the sandboxes attached to it
//	dup-ip           one address in two attachments
//	veth-leak        an nmv* host interface that no attachment names
//	bridge-leak      a bridge that no network names
//	host-link        a recorded host end missing, not a veth, down or not on its network's bridge; a
//	                 network's bridge missing, down, without netmgr's alias or its gateway addresses
//	pin-leak         an nsfs mount or a file under RUN/netns that no sandbox names
//	pin-missing      a sandbox whose namespace path is not an nsfs mount
//	lock-leak        a file under RUN/locks for a sandbox or network that does not exist
//	pause-leak       a live pause process that no sandbox names
//	pause-file-leak  a file under RUN/pause for a sandbox that does not exist
//	pause-missing    a recorded pause process that is gone, not pause, or in another namespace
//	nft-leak         an element of the inet netmgr_ports maps that no published port accounts for
//	nft-missing      a published port without its element(s)
//	fw-rules         inet netmgr's rules or bridges set not matching the networks
//	sandbox-netns    inside a sandbox: a recorded interface missing, with another MAC or other
//	                 global addresses than recorded, or an interface no attachment names
//
// veth-leak and pause-leak are the only ones that can change with no command running (the kernel
// destroys a removed namespace's veths asynchronously; a killed pause is reaped by init), so a new
// problem of those is re-checked for a few seconds before it counts.

type faultProblem struct {
	check string
	msg   string
}

var faultSettling = map[string]bool{"veth-leak": true, "pause-leak": true}

type faultSandbox struct {
	Name        string            `json:"name"`
	Mode        string            `json:"mode"`
	NetNS       string            `json:"netns"`
	Join        string            `json:"join"`
	PausePID    int               `json:"pause_pid"`
	Ports       []faultPort       `json:"ports"`
	Attachments []faultAttachment `json:"attachments"`
}

type faultPort struct {
	HostIP        string `json:"host_ip"`
	HostPort      int    `json:"host_port"`
	ContainerPort int    `json:"container_port"`
	Protocol      string `json:"protocol"`
}

type faultAttachment struct {
	Network       string `json:"network"`
	Interface     string `json:"interface"`
	HostInterface string `json:"host_interface"`
	IPv4          string `json:"ipv4"`
	IPv6          string `json:"ipv6"`
	MAC           string `json:"mac"`
}

type faultNetwork struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Driver    string            `json:"driver"`
	Gateways  []string          `json:"gateways"`
	Options   map[string]string `json:"options"`
	Internal  bool              `json:"internal"`
	Sandboxes []string          `json:"sandboxes"`
}

// portElem is one element of the netmgr_ports maps, or one that a published port needs.
type portElem struct {
	m, hostIP, proto string
	hostPort         int
	target           string
	targetPort       int
	owner            string
}

func (e portElem) String() string {
	h := "*"
	if e.hostIP != "" {
		h = e.hostIP
	}
	return fmt.Sprintf("%s: %s %s:%d -> %s:%d owner=%s", e.m, e.proto, h, e.hostPort, e.target, e.targetPort, e.owner)
}

type hostLink struct {
	kind, master, alias string
	up                  bool
	addrs               map[string]bool // addresses without prefix length
}

// faultState is what one check saw.
type faultState struct {
	sandboxes []faultSandbox
	networks  []faultNetwork
	links     map[string]hostLink
	mounts    map[string]bool // nsfs mount points under the run dir
	pins      map[string]bool // files under RUN/netns
	locks     []string
	pauseFile []string
	pauses    []int
	elems     map[portElem]bool
	fwNets    map[string]bool // network=NAME comments of inet netmgr's rules
	fwBridges map[string]bool
}

func (st *faultState) counts() string {
	if st == nil {
		return "-"
	}
	veths := 0
	for n := range st.links {
		if strings.HasPrefix(n, "nmv") {
			veths++
		}
	}
	return fmt.Sprintf("now sandboxes %d networks %d veths %d pins %d port-elements %d pause %d lock-files %d",
		len(st.sandboxes), len(st.networks), veths, len(st.mounts), len(st.elems), len(st.pauses), len(st.locks))
}

// settledCheck runs check until no new problem of a settling kind is left, for at most 10 s.
func (f *faultRun) settledCheck() (*faultState, []faultProblem) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, probs := f.check()
		fresh := false
		for _, p := range probs {
			if faultSettling[p.check] && !f.seen[p.check][p.msg] {
				fresh = true
			}
		}
		if !fresh || time.Now().After(deadline) {
			return st, probs
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// check takes a snapshot and compares.
func (f *faultRun) check() (*faultState, []faultProblem) {
	st, err := f.snapshot()
	if err != nil {
		return nil, []faultProblem{{"snapshot", err.Error()}}
	}
	return st, st.compare()
}

// compare reports every difference between the records and the rest of the snapshot.
func (st *faultState) compare() []faultProblem {
	var probs []faultProblem
	add := func(check, format string, a ...any) {
		probs = append(probs, faultProblem{check, fmt.Sprintf(format, a...)})
	}

	nets := map[string]faultNetwork{}
	bridges := map[string]faultNetwork{}
	for _, n := range st.networks {
		nets[n.Name] = n
		if n.Driver == "bridge" {
			bridges[n.Options["bridge"]] = n
		}
	}
	sbs := map[string]faultSandbox{}
	hostIfs := map[string]bool{}
	pins := map[string]bool{}
	pausePIDs := map[int]string{}
	attached := map[string][]string{} // network -> sandboxes
	addrs := map[string][]string{}
	for _, s := range st.sandboxes {
		sbs[s.Name] = s
		if s.Mode == "netns" {
			pins[s.NetNS] = true
		}
		if s.PausePID != 0 {
			pausePIDs[s.PausePID] = s.Name
		}
		for _, a := range s.Attachments {
			attached[a.Network] = append(attached[a.Network], s.Name)
			if a.HostInterface != "" {
				hostIfs[a.HostInterface] = true
			}
			for _, p := range []string{a.IPv4, a.IPv6} {
				if p != "" {
					ip, _, _ := strings.Cut(p, "/")
					addrs[ip] = append(addrs[ip], s.Name+"/"+a.Interface)
				}
			}
		}
	}

	// records
	for _, s := range st.sandboxes {
		for _, a := range s.Attachments {
			if _, ok := nets[a.Network]; !ok {
				add("records", "sandbox %s is attached to network %s, which does not exist", s.Name, a.Network)
			}
		}
	}
	for _, n := range st.networks {
		if got, want := sorted(n.Sandboxes), sorted(attached[n.Name]); got != want {
			add("records", "network %s lists sandboxes [%s], the sandboxes attached to it are [%s]", n.Name, got, want)
		}
	}

	// dup-ip
	for ip, who := range addrs {
		if len(who) > 1 {
			add("dup-ip", "%s is in %s", ip, strings.Join(who, " and "))
		}
	}

	// veth-leak, bridge-leak
	for name, l := range st.links {
		if strings.HasPrefix(name, "nmv") && !hostIfs[name] {
			add("veth-leak", "host interface %s (%s, master %q) without an endpoint", name, l.kind, l.master)
		}
		if l.kind == "bridge" {
			if _, ok := bridges[name]; !ok {
				add("bridge-leak", "bridge %s (alias %q) without a network", name, l.alias)
			}
		}
	}

	// host-link
	for _, s := range st.sandboxes {
		for _, a := range s.Attachments {
			n, ok := nets[a.Network]
			if !ok || a.HostInterface == "" || n.Driver != "bridge" {
				continue
			}
			l, ok := st.links[a.HostInterface]
			switch {
			case !ok:
				add("host-link", "sandbox %s: host end %s of %s is missing", s.Name, a.HostInterface, a.Network)
			case l.kind != "veth":
				add("host-link", "sandbox %s: host end %s is a %s, not a veth", s.Name, a.HostInterface, l.kind)
			case l.master != n.Options["bridge"]:
				add("host-link", "sandbox %s: host end %s has master %q, want %s", s.Name, a.HostInterface, l.master, n.Options["bridge"])
			case !l.up:
				add("host-link", "sandbox %s: host end %s is down", s.Name, a.HostInterface)
			}
		}
	}
	for br, n := range bridges {
		l, ok := st.links[br]
		switch {
		case !ok:
			add("host-link", "network %s: bridge %s is missing", n.Name, br)
			continue
		case l.kind != "bridge":
			add("host-link", "network %s: %s is a %s, not a bridge", n.Name, br, l.kind)
			continue
		case l.alias != "netmgr:"+n.ID:
			add("host-link", "network %s: bridge %s has alias %q, want %q (not marked as netmgr's)", n.Name, br, l.alias, "netmgr:"+n.ID)
		}
		if !l.up {
			add("host-link", "network %s: bridge %s is down", n.Name, br)
		}
		for _, gw := range n.Gateways {
			if !l.addrs[gw] {
				add("host-link", "network %s: bridge %s lacks gateway address %s", n.Name, br, gw)
			}
		}
	}

	// pin-leak, pin-missing
	for m := range st.mounts {
		if !pins[m] {
			add("pin-leak", "nsfs mount %s without a sandbox", m)
		}
	}
	for p := range st.pins {
		if !pins[p] {
			add("pin-leak", "file %s without a sandbox", p)
		}
	}
	for p := range pins {
		if !st.mounts[p] {
			add("pin-missing", "sandbox namespace %s is not mounted", p)
		}
	}

	// lock-leak
	for _, l := range st.locks {
		name := strings.TrimSuffix(l, ".lock")
		switch {
		case name == "firewall":
		case strings.HasPrefix(name, "network-"):
			if _, ok := nets[strings.TrimPrefix(name, "network-")]; !ok {
				add("lock-leak", "locks/%s: no network %s", l, strings.TrimPrefix(name, "network-"))
			}
		case strings.HasPrefix(name, "sandbox-"):
			if _, ok := sbs[strings.TrimPrefix(name, "sandbox-")]; !ok {
				add("lock-leak", "locks/%s: no sandbox %s", l, strings.TrimPrefix(name, "sandbox-"))
			}
		default:
			add("lock-leak", "locks/%s: not a lock of a known kind", l)
		}
	}

	// pause-leak, pause-file-leak, pause-missing
	live := map[int]bool{}
	for _, pid := range st.pauses {
		live[pid] = true
		if _, ok := pausePIDs[pid]; !ok {
			add("pause-leak", "pause process %d without a sandbox", pid)
		}
	}
	for _, p := range st.pauseFile {
		if _, ok := sbs[p]; !ok {
			add("pause-file-leak", "pause/%s: no sandbox %s", p, p)
		}
	}
	for pid, name := range pausePIDs {
		if !live[pid] {
			add("pause-missing", "sandbox %s: pause process %d is not running", name, pid)
			continue
		}
		if a, b := nsInode(fmt.Sprintf("/proc/%d/ns/net", pid)), nsInode(sbs[name].NetNS); a == 0 || a != b {
			add("pause-missing", "sandbox %s: pause process %d is in namespace %d, the sandbox's is %d", name, pid, a, b)
		}
	}

	// nft-leak, nft-missing
	want := map[portElem]bool{}
	for _, s := range st.sandboxes {
		if len(s.Ports) == 0 || len(s.Attachments) == 0 {
			continue
		}
		// Ports lead to the first attachment to a bridge network that is not internal; every
		// network of this test is one, and detaching that network is refused while ports are
		// published, so it is the first attachment.
		a := s.Attachments[0]
		for _, p := range s.Ports {
			for _, t := range []struct{ fam, cidr string }{{"4", a.IPv4}, {"6", a.IPv6}} {
				if t.cidr == "" {
					continue
				}
				ip, _, _ := strings.Cut(t.cidr, "/")
				e := portElem{m: "any" + t.fam, proto: p.Protocol, hostPort: p.HostPort, target: ip, targetPort: p.ContainerPort, owner: s.Name}
				if p.HostIP != "" && p.HostIP != "0.0.0.0" && p.HostIP != "::" {
					if strings.Contains(p.HostIP, ":") != (t.fam == "6") {
						continue
					}
					e.m, e.hostIP = "addr"+t.fam, p.HostIP
				}
				want[e] = true
			}
		}
	}
	for e := range st.elems {
		if !want[e] {
			add("nft-leak", "element %s without a published port", e)
		}
	}
	for e := range want {
		if !st.elems[e] {
			add("nft-missing", "published port needs element %s", e)
		}
	}

	// fw-rules
	for _, n := range st.networks {
		if n.Driver == "bridge" && !st.fwNets[n.Name] {
			add("fw-rules", "no inet netmgr rule for network %s", n.Name)
		}
	}
	for n := range st.fwNets {
		if _, ok := nets[n]; !ok {
			add("fw-rules", "inet netmgr rules for network %s, which does not exist", n)
		}
	}
	for br := range bridges {
		if !st.fwBridges[br] {
			add("fw-rules", "bridge %s is not in inet netmgr's bridges set", br)
		}
	}
	for br := range st.fwBridges {
		if _, ok := bridges[br]; !ok {
			add("fw-rules", "inet netmgr's bridges set has %s, which no network names", br)
		}
	}

	// sandbox-netns
	for _, s := range st.sandboxes {
		if s.Mode == "netns" && st.mounts[s.NetNS] {
			for _, m := range sandboxNetnsProblems(s) {
				add("sandbox-netns", "sandbox %s: %s", s.Name, m)
			}
		}
	}

	sort.Slice(probs, func(i, j int) bool {
		if probs[i].check != probs[j].check {
			return probs[i].check < probs[j].check
		}
		return probs[i].msg < probs[j].msg
	})
	return probs
}

func sorted(l []string) string {
	c := append([]string(nil), l...)
	sort.Strings(c)
	return strings.Join(c, " ")
}

func nsInode(path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}

// sandboxNetnsProblems compares a sandbox's recorded attachments with the interfaces in its namespace.
func sandboxNetnsProblems(s faultSandbox) []string {
	ns, err := sandbox.Open(s.NetNS)
	if err != nil {
		return []string{fmt.Sprintf("open namespace: %v", err)}
	}
	defer ns.Close()
	hd, err := ns.NewHandle()
	if err != nil {
		return []string{fmt.Sprintf("netlink handle: %v", err)}
	}
	defer hd.Close()
	links, err := hd.LinkList()
	if err != nil {
		return []string{fmt.Sprintf("list links: %v", err)}
	}
	byName := map[string]netlink.Link{}
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}
	var out []string
	recorded := map[string]bool{"lo": true}
	for _, a := range s.Attachments {
		recorded[a.Interface] = true
		l, ok := byName[a.Interface]
		if !ok {
			out = append(out, fmt.Sprintf("interface %s (network %s) is missing", a.Interface, a.Network))
			continue
		}
		if a.MAC != "" && l.Attrs().HardwareAddr.String() != a.MAC {
			out = append(out, fmt.Sprintf("%s has MAC %s, recorded %s", a.Interface, l.Attrs().HardwareAddr, a.MAC))
		}
		as, err := hd.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: list addresses: %v", a.Interface, err))
			continue
		}
		var have []string
		for _, x := range as {
			if x.Scope == unix.RT_SCOPE_UNIVERSE {
				have = append(have, x.IPNet.String())
			}
		}
		var want []string
		for _, p := range []string{a.IPv4, a.IPv6} {
			if p != "" {
				want = append(want, p)
			}
		}
		if sorted(have) != sorted(want) {
			out = append(out, fmt.Sprintf("%s has addresses [%s], recorded [%s]", a.Interface, sorted(have), sorted(want)))
		}
	}
	for name := range byName {
		if !recorded[name] {
			out = append(out, fmt.Sprintf("interface %s is not in the record", name))
		}
	}
	sort.Strings(out)
	return out
}

// snapshot reads the records (podctl ls), the host's links, mounts, run dir, pause processes and
// nftables.
func (f *faultRun) snapshot() (*faultState, error) {
	h := f.h
	st := &faultState{mounts: map[string]bool{}, pins: map[string]bool{}, links: map[string]hostLink{},
		elems: map[portElem]bool{}, fwNets: map[string]bool{}, fwBridges: map[string]bool{}}
	out, err := h.podctlTimeout("-o", "json", "sandbox", "ls")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(out), &st.sandboxes); err != nil {
		return nil, fmt.Errorf("sandbox ls: %v", err)
	}
	out, err = h.podctlTimeout("-o", "json", "network", "ls")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(out), &st.networks); err != nil {
		return nil, fmt.Errorf("network ls: %v", err)
	}

	hd, err := h.ns.NewHandle()
	if err != nil {
		return nil, err
	}
	defer hd.Close()
	links, err := hd.LinkList()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	for _, l := range links {
		a := l.Attrs()
		hl := hostLink{kind: l.Type(), master: names[a.MasterIndex], alias: a.Alias, up: a.Flags&net.FlagUp != 0}
		if hl.kind == "bridge" {
			hl.addrs = map[string]bool{}
			as, err := hd.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return nil, err
			}
			for _, x := range as {
				hl.addrs[x.IP.String()] = true
			}
		}
		st.links[a.Name] = hl
	}

	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(mi), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 10 || !strings.HasPrefix(fs[4], h.runDir+"/") {
			continue
		}
		for i, x := range fs {
			if x == "-" && i+1 < len(fs) && fs[i+1] == "nsfs" {
				st.mounts[fs[4]] = true
			}
		}
	}
	if ents, err := os.ReadDir(filepath.Join(h.runDir, "netns")); err == nil {
		for _, e := range ents {
			st.pins[filepath.Join(h.runDir, "netns", e.Name())] = true
		}
	}
	if ents, err := os.ReadDir(filepath.Join(h.runDir, "locks")); err == nil {
		for _, e := range ents {
			st.locks = append(st.locks, e.Name())
		}
	}
	if ents, err := os.ReadDir(filepath.Join(h.runDir, "pause")); err == nil {
		for _, e := range ents {
			st.pauseFile = append(st.pauseFile, e.Name())
		}
	}
	st.pauses = f.pausePIDs()

	if err := readNft(h, st); err != nil {
		return nil, err
	}
	return st, nil
}

// readNft reads the host namespace's ruleset with nft(8) (tests may shell out; the library does not):
// the elements of inet netmgr_ports' maps, and the network comments and bridges set of inet netmgr.
func readNft(h *host, st *faultState) error {
	ctx, cancel := context.WithTimeout(context.Background(), faultCmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+h.ns.Path(), "nft", "-j", "list", "ruleset").Output()
	if err != nil {
		return fmt.Errorf("nft -j list ruleset: %v", err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return fmt.Errorf("nft -j list ruleset: %v", err)
	}
	for _, obj := range doc.Nftables {
		for kind, raw := range obj {
			var x struct {
				Family  string            `json:"family"`
				Table   string            `json:"table"`
				Name    string            `json:"name"`
				Comment string            `json:"comment"`
				Elem    []json.RawMessage `json:"elem"`
			}
			if err := json.Unmarshal(raw, &x); err != nil || x.Family != "inet" {
				continue
			}
			switch {
			case kind == "rule" && x.Table == "netmgr":
				if n, ok := strings.CutPrefix(x.Comment, "network="); ok {
					st.fwNets[n] = true
				}
			case kind == "set" && x.Table == "netmgr" && x.Name == "ifaces": // the networks' host interfaces: here, bridges
				for _, e := range x.Elem {
					var s string
					if err := json.Unmarshal(e, &s); err != nil {
						return fmt.Errorf("nft: bridges element %s: %v", e, err)
					}
					st.fwBridges[s] = true
				}
			case kind == "map" && x.Table == "netmgr_ports":
				for _, e := range x.Elem {
					pe, err := parsePortElem(x.Name, e)
					if err != nil {
						return fmt.Errorf("nft: %s element %s: %v", x.Name, e, err)
					}
					st.elems[pe] = true
				}
			}
		}
	}
	return nil
}

// parsePortElem reads one map element as nft -j prints it:
// [{"elem": {"val": {"concat": [KEY...]}, "comment": "owner=NAME"}}, {"concat": [IP, PORT]}]
// (without a comment the key is the bare {"concat": [...]}).
func parsePortElem(m string, raw json.RawMessage) (portElem, error) {
	var pair []json.RawMessage
	if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
		return portElem{}, fmt.Errorf("not a key: value pair")
	}
	type concat struct {
		Concat []any `json:"concat"`
	}
	var k struct {
		Elem *struct {
			Val     concat `json:"val"`
			Comment string `json:"comment"`
		} `json:"elem"`
		concat
	}
	if err := json.Unmarshal(pair[0], &k); err != nil {
		return portElem{}, err
	}
	key, owner := k.Concat, ""
	if k.Elem != nil {
		key, owner = k.Elem.Val.Concat, strings.TrimPrefix(k.Elem.Comment, "owner=")
	}
	var v concat
	if err := json.Unmarshal(pair[1], &v); err != nil {
		return portElem{}, err
	}
	e := portElem{m: m, owner: owner}
	if strings.HasPrefix(m, "addr") {
		if len(key) != 3 {
			return portElem{}, fmt.Errorf("key of %d parts", len(key))
		}
		e.hostIP, key = fmt.Sprint(key[0]), key[1:]
	}
	if len(key) != 2 || len(v.Concat) != 2 {
		return portElem{}, fmt.Errorf("key of %d parts, value of %d", len(key), len(v.Concat))
	}
	hp, ok1 := key[1].(float64)
	tp, ok2 := v.Concat[1].(float64)
	if !ok1 || !ok2 {
		return portElem{}, fmt.Errorf("ports are not numbers")
	}
	e.proto, e.hostPort, e.target, e.targetPort = fmt.Sprint(key[0]), int(hp), fmt.Sprint(v.Concat[0]), int(tp)
	return e, nil
}
