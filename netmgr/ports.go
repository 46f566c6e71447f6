package netmgr

import (
	"errors"

	"github.com/netmgr/netmgr/netmgr/portmap"
)

// Protocols a port can be published for.
const (
	ProtoTCP = portmap.ProtoTCP
	ProtoUDP = portmap.ProtoUDP
)

// PortMapping publishes one port of a sandbox on the host: connections to HostIP:HostPort (any local
// address of the host when HostIP is the zero Addr) are forwarded to the sandbox's ContainerPort.
// It is what Docker's `-p` and a Kubernetes container's `ports[].hostPort` ask for. It is
// portmap.Mapping, where its rules live.
type PortMapping = portmap.Mapping

// ParsePublish parses the `--publish` syntax of Docker and podctl, [HOSTIP:]HOSTPORT:PORT[/tcp|udp],
// where both ports may be equally long ranges (8000-8010:80-90) and an IPv6 HOSTIP is written in
// brackets ([2001:db8::1]:8080:80). A range yields one mapping per port. Errors wrap ErrInvalid
// (see portmap.Parse).
func ParsePublish(s string) ([]PortMapping, error) {
	pm, err := portmap.Parse(s)
	return pm, portErr(err)
}

// portErr makes an error of package portmap match netmgr's sentinel of the same meaning too, keeping
// its message.
func portErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, portmap.ErrInvalid) && !errors.Is(err, ErrInvalid):
		return alsoErr{err, ErrInvalid}
	case errors.Is(err, portmap.ErrExists) && !errors.Is(err, ErrExists):
		return alsoErr{err, ErrExists}
	}
	return err
}

// alsoErr is err, which also matches sentinel.
type alsoErr struct {
	err      error
	sentinel error
}

func (e alsoErr) Error() string        { return e.err.Error() }
func (e alsoErr) Unwrap() error        { return e.err }
func (e alsoErr) Is(target error) bool { return target == e.sentinel }
