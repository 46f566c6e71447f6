package pod

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/netmgr/netmgr/netmgr"
)

// Spec describes a pod to run.
type Spec struct {
	// Name names the pod and its sandbox; 1-63 characters of lowercase letters, digits, '-' and '.'.
	Name string
	// Labels are the pod's own labels; keys starting with "netmgr.io/" are reserved.
	Labels map[string]string
	// Networks the pod's sandbox attaches to; none leaves it with loopback only.
	Networks []netmgr.AttachSpec
	// Hostname of the pod; default Name.
	Hostname string
	// Containers are created and started in order.
	Containers []ContainerSpec
	// DNSPolicy is ClusterFirst (default), Default or None; DNSConfig adds to it (None: is all of it).
	DNSPolicy string
	DNSConfig *DNSConfig
	// HostAliases are added to every container's /etc/hosts.
	HostAliases []HostAlias
	// RestartPolicy is recorded on the sandbox for a keeper (see RestartPolicy); empty is Never.
	RestartPolicy RestartPolicy
}

// ContainerSpec describes one container of a pod, as a Kubernetes container does.
type ContainerSpec struct {
	// Name is unique in the pod: 1-63 characters of lowercase letters, digits and '-'.
	Name string `json:"name"`
	// Image is a local root filesystem (an absolute path or "rootfs:/path") or an image reference.
	Image string `json:"image"`
	// Command replaces the image's entrypoint; Args its command (Kubernetes' meaning). A local root
	// filesystem has neither, so Command or Args must give the program.
	Command []string `json:"command,omitempty"`
	Args    []string `json:"args,omitempty"`
	// Env holds NAME=VALUE entries.
	Env []string `json:"env,omitempty"`
	// Ports are informational unless HostPort is set, which publishes the port on the host.
	Ports []Port `json:"ports,omitempty"`
	// ImagePullPolicy says when an image reference is pulled; empty is Kubernetes' default (see
	// PullPolicy). It means nothing for a local root filesystem.
	ImagePullPolicy PullPolicy `json:"image_pull_policy,omitempty"`
	// Readiness and Liveness are probes the agent's keeper runs (see Probe).
	Readiness *Probe `json:"readiness,omitempty"`
	Liveness  *Probe `json:"liveness,omitempty"`
}

// Port is one port of a container.
type Port struct {
	Name          string     `json:"name,omitempty"`
	ContainerPort uint16     `json:"container_port"`
	HostPort      uint16     `json:"host_port,omitempty"`
	HostIP        netip.Addr `json:"host_ip,omitzero"`
	// Protocol is "tcp" or "udp" (any case); empty means tcp.
	Protocol string `json:"protocol,omitempty"`
}

// Labels the pod facade sets. LabelPod marks a sandbox as a pod's (its value is the pod's name) and a
// runtime container as belonging to that pod; LabelContainer carries a container's name in its pod.
const (
	labelPrefix     = "netmgr.io/"
	LabelPod        = labelPrefix + "pod"
	LabelContainer  = labelPrefix + "container"
	LabelContainers = labelPrefix + "containers" // on the sandbox: the containers' names, in order
)

var (
	podNameRE       = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	containerNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// maxIDLen is containerd's limit on identifiers; a container's ID is POD_NAME.
const maxIDLen = 76

// ContainerID is the runtime ID of a pod's container.
func ContainerID(pod, container string) string { return pod + "_" + container }

// LocalRootFS reports whether image names a local root filesystem, and its path.
func LocalRootFS(image string) (string, bool) {
	if p, ok := strings.CutPrefix(image, "rootfs:"); ok {
		return p, true
	}
	if filepath.IsAbs(image) {
		return image, true
	}
	return "", false
}

// Validate checks a spec without looking at the system. Errors wrap netmgr.ErrInvalid.
func (s *Spec) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", netmgr.ErrInvalid, fmt.Sprintf(format, a...))
	}
	if len(s.Name) > 63 || !podNameRE.MatchString(s.Name) {
		return bad("pod name %q must be 1-63 characters of lowercase letters, digits, '-' and '.', starting and ending with a letter or digit", s.Name)
	}
	for k := range s.Labels {
		if strings.HasPrefix(k, labelPrefix) {
			return bad("label %q: keys starting with %q are reserved", k, labelPrefix)
		}
	}
	if len(s.Containers) == 0 {
		return bad("pod %q has no containers", s.Name)
	}
	if err := s.validateDNS(); err != nil {
		return err
	}
	if !validRestartPolicy(s.RestartPolicy) {
		return bad("restartPolicy %q is not Always, OnFailure or Never", s.RestartPolicy)
	}
	seen := map[string]bool{}
	hostPorts := map[string]string{}
	for i := range s.Containers {
		c := &s.Containers[i]
		where := fmt.Sprintf("container %q", c.Name)
		if len(c.Name) > 63 || !containerNameRE.MatchString(c.Name) {
			return bad("container #%d: name %q must be 1-63 characters of lowercase letters, digits and '-', starting and ending with a letter or digit", i+1, c.Name)
		}
		if seen[c.Name] {
			return bad("container name %q given twice", c.Name)
		}
		seen[c.Name] = true
		if id := ContainerID(s.Name, c.Name); len(id) > maxIDLen {
			return bad("%s: pod and container names together are too long for a container ID (%d characters, at most %d)", where, len(id), maxIDLen)
		}
		if c.Image == "" {
			return bad("%s: no image", where)
		}
		if err := c.Readiness.validate(where + ": readinessProbe"); err != nil {
			return err
		}
		if err := c.Liveness.validate(where + ": livenessProbe"); err != nil {
			return err
		}
		if !validPullPolicy(c.ImagePullPolicy) {
			return bad("%s: imagePullPolicy %q is not Always, IfNotPresent or Never", where, c.ImagePullPolicy)
		}
		if p, ok := LocalRootFS(c.Image); ok {
			if !filepath.IsAbs(p) {
				return bad("%s: root filesystem %q is not an absolute path", where, p)
			}
			if len(c.Command) == 0 && len(c.Args) == 0 {
				return bad("%s: a root filesystem image has no default command; give command or args", where)
			}
		}
		for _, e := range c.Env {
			if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
				return bad("%s: environment entry %q is not NAME=VALUE", where, e)
			}
		}
		for _, p := range c.Ports {
			if p.ContainerPort == 0 {
				return bad("%s: port %q has no containerPort", where, p.Name)
			}
			proto := strings.ToLower(p.Protocol)
			if proto == "" {
				proto = netmgr.ProtoTCP
			}
			if proto != netmgr.ProtoTCP && proto != netmgr.ProtoUDP {
				return bad("%s: port %d: protocol %q is not TCP or UDP", where, p.ContainerPort, p.Protocol)
			}
			if p.HostPort != 0 {
				k := fmt.Sprintf("%s/%s/%d", p.HostIP, proto, p.HostPort)
				if other, dup := hostPorts[k]; dup {
					return bad("%s: hostPort %d/%s is also asked for by container %q", where, p.HostPort, proto, other)
				}
				hostPorts[k] = c.Name
			}
		}
	}
	return nil
}

// publish returns the host port mappings the spec's containers ask for.
func (s *Spec) publish() []netmgr.PortMapping {
	var out []netmgr.PortMapping
	for _, c := range s.Containers {
		for _, p := range c.Ports {
			if p.HostPort == 0 {
				continue
			}
			proto := strings.ToLower(p.Protocol)
			if proto == "" {
				proto = netmgr.ProtoTCP
			}
			out = append(out, netmgr.PortMapping{HostIP: p.HostIP, HostPort: p.HostPort, ContainerPort: p.ContainerPort, Protocol: proto})
		}
	}
	return out
}
