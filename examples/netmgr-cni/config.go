package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/netmgr"
)

// Defaults for the state and run directories: netmgr's own, shared with podctl and any library user.
// One host namespace has one netmgr state: its firewall tables, host-side interfaces and gc cover
// every netmgr network there, so two states side by side would remove each other's rules and links.
const (
	DefaultStateDir = netmgr.DefaultStateDir
	DefaultRunDir   = netmgr.DefaultRunDir
)

// Labels netmgr-cni puts on each sandbox: the CNI identity of the attachment, which GC matches
// against cni.dev/valid-attachments.
const (
	LabelNetwork     = "cni.netmgr.io/network"
	LabelContainerID = "cni.netmgr.io/container-id"
	LabelIfName      = "cni.netmgr.io/ifname"
	LabelNetNS       = "cni.netmgr.io/netns"
)

// validAttachmentsKey is how the runtime passes the attachments GC must keep.
const validAttachmentsKey = "cni.dev/valid-attachments"

// NetConf is netmgr-cni's plugin configuration: the standard keys plus the network it stands for.
//
//	{"type": "netmgr-cni", "driver": "bridge", "subnets": ["10.250.0.0/24"], "options": {...},
//	 "stateDir": "/var/lib/netmgr", "runDir": "/run/netmgr"}
type NetConf struct {
	types.PluginConf
	Driver   string            `json:"driver"`
	Subnets  []string          `json:"subnets,omitempty"`
	Gateways []string          `json:"gateways,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	Internal bool              `json:"internal,omitempty"`
	MTU      int               `json:"mtu,omitempty"`
	StateDir string            `json:"stateDir,omitempty"`
	RunDir   string            `json:"runDir,omitempty"`
	// LogFile, if set, receives netmgr's structured logs (JSON lines) at LogLevel (default info).
	LogFile  string `json:"logFile,omitempty"`
	LogLevel string `json:"logLevel,omitempty"`

	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`
	Args          *struct {
		CNI *struct {
			IPs []string `json:"ips,omitempty"`
			MAC string   `json:"mac,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`
}

// RuntimeConfig holds the capabilities a runtime passes (only those the configuration declares).
type RuntimeConfig struct {
	IPs          []string      `json:"ips,omitempty"`
	MAC          string        `json:"mac,omitempty"`
	PortMappings []PortMapping `json:"portMappings,omitempty"`
	IPRanges     [][]IPRange   `json:"ipRanges,omitempty"`
}

// PortMapping is one entry of the portMappings capability.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// IPRange is one entry of the ipRanges capability.
type IPRange struct {
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway,omitempty"`
}

// config is a parsed and checked NetConf.
type config struct {
	conf     *NetConf
	stateDir string
	runDir   string
	spec     netmgr.NetworkSpec // the network this configuration stands for
	ips      []netip.Addr       // static addresses asked for
	mac      string
	publish  []netmgr.PortMapping // the portMappings capability
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// parseDirs reads just what DEL, GC and STATUS need: the network name and the directories. They
// must work even when the rest of a configuration has gone bad.
func parseDirs(stdin []byte) (*config, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode netmgr-cni configuration: %v", err), "")
	}
	c := &config{conf: conf, stateDir: DefaultStateDir, runDir: DefaultRunDir}
	if len(conf.Name) > 63 || !nameRE.MatchString(conf.Name) {
		return nil, invalidConf("network name %q must be 1-63 characters of letters, digits, '_', '.', '-', starting with a letter or digit", conf.Name)
	}
	for _, d := range []struct {
		key string
		val string
		dst *string
	}{{"stateDir", conf.StateDir, &c.stateDir}, {"runDir", conf.RunDir, &c.runDir}} {
		if d.val == "" {
			continue
		}
		if !filepath.IsAbs(d.val) {
			return nil, invalidConf("%s %q must be an absolute path", d.key, d.val)
		}
		*d.dst = filepath.Clean(d.val)
	}
	return c, nil
}

// parseConfig reads and checks a whole configuration, as ADD and CHECK need it, before anything is
// changed. cniArgs is CNI_ARGS.
func parseConfig(stdin []byte, cniArgs string) (*config, error) {
	c, err := parseDirs(stdin)
	if err != nil {
		return nil, err
	}
	conf := c.conf
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode prevResult: %v", err), "")
	}
	switch conf.Driver {
	case "":
		return nil, invalidConf(`"driver" is missing: name the netmgr driver of network %q (available: %s)`, conf.Name, strings.Join(attachable(), ", "))
	case "host", "link", "cni":
		return nil, invalidConf("driver %q cannot be used by netmgr-cni: it gives the container no interface of its own; use one of %s", conf.Driver, strings.Join(attachable(), ", "))
	}
	if _, ok := drivers.Lookup(conf.Driver); !ok {
		return nil, invalidConf("unknown driver %q (available: %s)", conf.Driver, strings.Join(attachable(), ", "))
	}
	spec := netmgr.NetworkSpec{Name: conf.Name, Driver: conf.Driver, Options: conf.Options, Internal: conf.Internal, MTU: conf.MTU}
	if conf.MTU < 0 {
		return nil, invalidConf("mtu %d is negative", conf.MTU)
	}
	subnets, gateways := conf.Subnets, conf.Gateways
	if len(subnets) == 0 {
		// Kubernetes passes the node's pod CIDR as ipRanges when the configuration declares it.
		for _, set := range conf.RuntimeConfig.IPRanges {
			if len(set) > 0 {
				subnets = append(subnets, set[0].Subnet)
				if set[0].Gateway != "" {
					gateways = append(gateways, set[0].Gateway)
				}
			}
		}
	}
	if len(subnets) == 0 {
		return nil, invalidConf(`"subnets" is missing: give network %q at least one CIDR, e.g. "subnets": ["10.250.0.0/24"] (or declare the ipRanges capability)`, conf.Name)
	}
	fams := map[bool]bool{}
	for _, s := range subnets {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, invalidConf("subnet %q is not a CIDR (like 10.250.0.0/24 or fd00:250::/64)", s)
		}
		if p != p.Masked() {
			return nil, invalidConf("subnet %q has host bits set; did you mean %s?", s, p.Masked())
		}
		if fams[p.Addr().Is4()] {
			return nil, invalidConf("subnets %v: at most one IPv4 and one IPv6 subnet", subnets)
		}
		fams[p.Addr().Is4()] = true
		spec.Subnets = append(spec.Subnets, p)
	}
	for _, g := range gateways {
		a, err := netip.ParseAddr(g)
		if err != nil {
			return nil, invalidConf("gateway %q is not an IP address", g)
		}
		spec.Gateways = append(spec.Gateways, a)
	}
	c.spec = spec

	for _, pm := range conf.RuntimeConfig.PortMappings {
		m, err := portMapping(pm)
		if err != nil {
			return nil, err
		}
		c.publish = append(c.publish, m)
	}
	ips, mac := conf.RuntimeConfig.IPs, conf.RuntimeConfig.MAC
	if conf.Args != nil && conf.Args.CNI != nil {
		ips = append(ips, conf.Args.CNI.IPs...)
		if mac == "" {
			mac = conf.Args.CNI.MAC
		}
	}
	argIP, argMAC := parseCNIArgs(cniArgs)
	if argIP != "" {
		ips = append(ips, strings.Split(argIP, ",")...)
	}
	if mac == "" {
		mac = argMAC
	}
	for _, s := range ips {
		a, err := parseIP(s)
		if err != nil {
			return nil, invalidConf("requested address %q is not an IP address", s)
		}
		if !slices.ContainsFunc(spec.Subnets, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return nil, invalidConf("requested address %s is not in any subnet of network %q (%v)", a, conf.Name, spec.Subnets)
		}
		c.ips = append(c.ips, a)
	}
	if mac != "" {
		if _, err := net.ParseMAC(mac); err != nil {
			return nil, invalidConf("requested mac %q: %v", mac, err)
		}
		c.mac = mac
	}
	return c, nil
}

// portMapping converts one entry of the portMappings capability.
func portMapping(pm PortMapping) (netmgr.PortMapping, error) {
	proto := strings.ToLower(pm.Protocol)
	if proto == "" {
		proto = netmgr.ProtoTCP
	}
	if proto != netmgr.ProtoTCP && proto != netmgr.ProtoUDP {
		return netmgr.PortMapping{}, types.NewError(types.ErrUnsupportedField,
			fmt.Sprintf("port mapping %d:%d/%s: netmgr publishes tcp and udp ports only", pm.HostPort, pm.ContainerPort, pm.Protocol), "")
	}
	if pm.HostPort < 1 || pm.HostPort > 65535 || pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
		return netmgr.PortMapping{}, invalidConf("port mapping %d:%d/%s: ports must be 1-65535", pm.HostPort, pm.ContainerPort, proto)
	}
	m := netmgr.PortMapping{HostPort: uint16(pm.HostPort), ContainerPort: uint16(pm.ContainerPort), Protocol: proto}
	if pm.HostIP != "" {
		a, err := netip.ParseAddr(pm.HostIP)
		if err != nil {
			return netmgr.PortMapping{}, invalidConf("port mapping %d:%d/%s: hostIP %q is not an IP address", pm.HostPort, pm.ContainerPort, proto, pm.HostIP)
		}
		m.HostIP = a
	}
	return m, nil
}

// parseIP accepts an address with or without a prefix length, as runtimes send both.
func parseIP(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

// parseCNIArgs picks IP and MAC out of CNI_ARGS ("K=V;K2=V2"), ignoring everything else as the
// reference plugins do with IgnoreUnknown.
func parseCNIArgs(s string) (ip, mac string) {
	for _, kv := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "IP":
			ip = v
		case "MAC":
			mac = v
		}
	}
	return ip, mac
}

// attachable lists the registered drivers that give a container its own interface.
func attachable() []string {
	var out []string
	for _, n := range drivers.Names() {
		switch n {
		case "host", "link", "cni":
		default:
			out = append(out, n)
		}
	}
	return out
}

// sandboxName derives the netmgr sandbox of one CNI attachment: the same (network, container ID,
// interface) always gives the same name, and the name is valid whatever the container ID looks like.
func sandboxName(network, containerID, ifname string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifname))
	return "cni-" + hex.EncodeToString(sum[:16])
}

// validAttachments returns the attachments a GC must keep, and whether the runtime sent the list at
// all: without it, GC must not guess.
func validAttachments(stdin []byte) (map[types.GCAttachment]bool, bool, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, false, err
	}
	msg, ok := raw[validAttachmentsKey]
	if !ok {
		return nil, false, nil
	}
	var list []types.GCAttachment
	if err := json.Unmarshal(msg, &list); err != nil {
		return nil, true, fmt.Errorf("decode %s: %w", validAttachmentsKey, err)
	}
	keep := make(map[types.GCAttachment]bool, len(list))
	for _, a := range list {
		keep[a] = true
	}
	return keep, true, nil
}
