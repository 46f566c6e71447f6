package portmap

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

var (
	// ErrInvalid reports a mapping no sandbox can publish (malformed, or not one of the host's
	// addresses). netmgr's ParsePublish and the Manager's errors match netmgr.ErrInvalid too.
	ErrInvalid = errors.New("invalid argument")
	// ErrExists reports a host port another sandbox publishes already (netmgr.ErrExists).
	ErrExists = errors.New("already exists")
)

// Protocols a port can be published for.
const (
	ProtoTCP = "tcp"
	ProtoUDP = "udp"
)

// Mapping publishes one port of a sandbox on the host: connections to HostIP:HostPort (any local
// address of the host when HostIP is the zero Addr) are forwarded to the sandbox's ContainerPort.
// It is what Docker's `-p` and a Kubernetes container's `ports[].hostPort` ask for.
type Mapping struct {
	// HostIP restricts the mapping to one address of the host. The zero Addr means every address of
	// the host, IPv4 and (if the sandbox has an IPv6 address) IPv6; 0.0.0.0 and :: mean every
	// address of that family only.
	HostIP netip.Addr `json:"host_ip,omitzero"`
	// HostPort is the port on the host, 1-65535.
	HostPort uint16 `json:"host_port"`
	// ContainerPort is the port inside the sandbox, 1-65535.
	ContainerPort uint16 `json:"container_port"`
	// Protocol is "tcp" or "udp", matched without regard to case (Kubernetes writes "TCP"); empty
	// means tcp.
	Protocol string `json:"protocol"`
}

// String formats m in the syntax Parse reads: [HOSTIP:]HOSTPORT:PORT/PROTO.
func (m Mapping) String() string {
	var b strings.Builder
	if m.HostIP.IsValid() {
		if m.HostIP.Is6() {
			fmt.Fprintf(&b, "[%s]:", m.HostIP)
		} else {
			fmt.Fprintf(&b, "%s:", m.HostIP)
		}
	}
	proto := strings.ToLower(m.Protocol)
	if proto == "" {
		proto = ProtoTCP
	}
	fmt.Fprintf(&b, "%d:%d/%s", m.HostPort, m.ContainerPort, proto)
	return b.String()
}

// Parse parses the `--publish` syntax of Docker and podctl, [HOSTIP:]HOSTPORT:PORT[/tcp|udp],
// where both ports may be equally long ranges (8000-8010:80-90) and an IPv6 HOSTIP is written in
// brackets ([2001:db8::1]:8080:80). A range yields one mapping per port. Errors wrap ErrInvalid.
func Parse(s string) ([]Mapping, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: port mapping %q: %s", ErrInvalid, s, fmt.Sprintf(format, a...))
	}
	rest, proto := s, ProtoTCP
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		rest, proto = s[:i], strings.ToLower(s[i+1:])
		if proto != ProtoTCP && proto != ProtoUDP {
			return nil, bad("protocol %q is not tcp or udp", s[i+1:])
		}
	}
	var host netip.Addr
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]:")
		if end < 0 {
			return nil, bad("an IPv6 host address must be followed by ]:HOSTPORT:PORT")
		}
		a, err := netip.ParseAddr(rest[1:end])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return nil, bad("%q is not an IPv6 address", rest[1:end])
		}
		host, rest = a, rest[end+2:]
	}
	parts := strings.Split(rest, ":")
	switch {
	case len(parts) == 3 && !host.IsValid():
		a, err := netip.ParseAddr(parts[0])
		if err != nil || !a.Is4() {
			return nil, bad("%q is not an IPv4 address (write an IPv6 address in brackets)", parts[0])
		}
		host, parts = a, parts[1:]
	case len(parts) != 2:
		return nil, bad("want [HOSTIP:]HOSTPORT:PORT[/tcp|udp]")
	}
	hlo, hhi, err := parsePortRange(parts[0])
	if err != nil {
		return nil, bad("host port: %v", err)
	}
	clo, chi, err := parsePortRange(parts[1])
	if err != nil {
		return nil, bad("container port: %v", err)
	}
	if hhi-hlo != chi-clo {
		return nil, bad("host range %s has %d ports, container range %s has %d", parts[0], hhi-hlo+1, parts[1], chi-clo+1)
	}
	out := make([]Mapping, 0, hhi-hlo+1)
	for i := 0; i <= hhi-hlo; i++ {
		out = append(out, Mapping{HostIP: host, HostPort: uint16(hlo + i), ContainerPort: uint16(clo + i), Protocol: proto})
	}
	return out, nil
}

// parsePortRange parses "N" or "N-M" with 1 <= N <= M <= 65535.
func parsePortRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if lo, err = parsePort(a); err != nil {
		return 0, 0, err
	}
	hi = lo
	if isRange {
		if hi, err = parsePort(b); err != nil {
			return 0, 0, err
		}
		if hi < lo {
			return 0, 0, fmt.Errorf("range %s ends before it starts", s)
		}
	}
	return lo, hi, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 || s != strconv.Itoa(n) {
		return 0, fmt.Errorf("%q is not a port number 1-65535", s)
	}
	return n, nil
}

// Normalize validates one mapping and returns it with a lower-case protocol and a plain host
// address. Errors wrap ErrInvalid.
func Normalize(pm Mapping) (Mapping, error) {
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
