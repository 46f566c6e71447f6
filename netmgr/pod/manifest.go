package pod

import (
	"fmt"
	"net/netip"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/netmgr/netmgr/netmgr"
)

// manifest is the part of a Kubernetes v1 Pod that a pod here honours. Other fields are ignored,
// except those listed in ParseManifest whose silent omission would change what runs.
type manifest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Hostname  string `json:"hostname"`
		DNSPolicy string `json:"dnsPolicy"`
		DNSConfig *struct {
			Nameservers []string `json:"nameservers"`
			Searches    []string `json:"searches"`
			Options     []struct {
				Name  string  `json:"name"`
				Value *string `json:"value"`
			} `json:"options"`
		} `json:"dnsConfig"`
		HostAliases []struct {
			IP        string   `json:"ip"`
			Hostnames []string `json:"hostnames"`
		} `json:"hostAliases"`
		HostNetwork    bool                `json:"hostNetwork"`
		Containers     []manifestContainer `json:"containers"`
		InitContainers []manifestContainer `json:"initContainers"`
	} `json:"spec"`
}

type manifestContainer struct {
	Name            string   `json:"name"`
	Image           string   `json:"image"`
	ImagePullPolicy string   `json:"imagePullPolicy"`
	Command         []string `json:"command"`
	Args            []string `json:"args"`
	Env             []struct {
		Name      string `json:"name"`
		Value     string `json:"value"`
		ValueFrom any    `json:"valueFrom"`
	} `json:"env"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int    `json:"containerPort"`
		HostPort      int    `json:"hostPort"`
		HostIP        string `json:"hostIP"`
		Protocol      string `json:"protocol"`
	} `json:"ports"`
}

// ParseManifest reads a Kubernetes v1 Pod manifest (YAML or JSON): metadata.name and labels, and
// spec.hostname, dnsPolicy, dnsConfig, hostAliases and spec.containers[] with name, image, command,
// args, env and ports. It rejects what
// it cannot honour (initContainers, hostNetwork, env valueFrom) rather than ignore it, and returns a
// validated Spec. Errors wrap netmgr.ErrInvalid.
func ParseManifest(data []byte) (*Spec, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("manifest: %w: %s", netmgr.ErrInvalid, fmt.Sprintf(format, a...))
	}
	if strings.TrimSpace(string(data)) == "" {
		return nil, bad("empty")
	}
	var m manifest
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, bad("%s", strings.TrimPrefix(err.Error(), "error converting YAML to JSON: "))
	}
	if m.Kind != "Pod" {
		return nil, bad("kind is %q, want Pod", m.Kind)
	}
	if m.APIVersion != "v1" {
		return nil, bad("apiVersion is %q, want v1", m.APIVersion)
	}
	if m.Metadata.Name == "" {
		return nil, bad("no metadata.name")
	}
	if m.Spec.HostNetwork {
		return nil, bad("spec.hostNetwork is not supported (a pod has a sandbox of its own)")
	}
	if len(m.Spec.InitContainers) > 0 {
		return nil, bad("spec.initContainers are not supported")
	}
	s := &Spec{Name: m.Metadata.Name, Labels: m.Metadata.Labels, Hostname: m.Spec.Hostname, DNSPolicy: m.Spec.DNSPolicy}
	if s.DNSPolicy == "ClusterFirstWithHostNet" {
		s.DNSPolicy = DNSClusterFirst // hostNetwork is refused above, so this is ClusterFirst
	}
	if c := m.Spec.DNSConfig; c != nil {
		s.DNSConfig = &DNSConfig{Searches: c.Searches}
		for _, n := range c.Nameservers {
			a, err := netip.ParseAddr(n)
			if err != nil {
				return nil, bad("dnsConfig: nameserver %q is not an IP address", n)
			}
			s.DNSConfig.Nameservers = append(s.DNSConfig.Nameservers, a)
		}
		for _, o := range c.Options {
			if o.Name == "" {
				return nil, bad("dnsConfig: an option has no name")
			}
			if o.Value != nil {
				s.DNSConfig.Options = append(s.DNSConfig.Options, o.Name+":"+*o.Value)
			} else {
				s.DNSConfig.Options = append(s.DNSConfig.Options, o.Name)
			}
		}
	}
	for _, h := range m.Spec.HostAliases {
		a, err := netip.ParseAddr(h.IP)
		if err != nil {
			return nil, bad("hostAliases: ip %q is not an IP address", h.IP)
		}
		s.HostAliases = append(s.HostAliases, HostAlias{IP: a, Hostnames: h.Hostnames})
	}
	for _, mc := range m.Spec.Containers {
		c := ContainerSpec{Name: mc.Name, Image: mc.Image, Command: mc.Command, Args: mc.Args, ImagePullPolicy: PullPolicy(mc.ImagePullPolicy)}
		for j, e := range mc.Env {
			if e.ValueFrom != nil {
				return nil, bad("container %q: env %q: valueFrom is not supported", mc.Name, e.Name)
			}
			if e.Name == "" {
				return nil, bad("container %q: env entry #%d has no name", mc.Name, j+1)
			}
			if strings.Contains(e.Name, "=") {
				// NAME=VALUE would split elsewhere, and the container see another variable.
				return nil, bad("container %q: env %q: a name cannot hold '='", mc.Name, e.Name)
			}
			c.Env = append(c.Env, e.Name+"="+e.Value)
		}
		for _, p := range mc.Ports {
			if p.ContainerPort < 1 || p.ContainerPort > 65535 {
				return nil, bad("container %q: containerPort %d is not 1-65535", mc.Name, p.ContainerPort)
			}
			if p.HostPort < 0 || p.HostPort > 65535 {
				return nil, bad("container %q: hostPort %d is not 0-65535", mc.Name, p.HostPort)
			}
			port := Port{Name: p.Name, ContainerPort: uint16(p.ContainerPort), HostPort: uint16(p.HostPort), Protocol: p.Protocol}
			if p.HostIP != "" {
				ip, err := netip.ParseAddr(p.HostIP)
				if err != nil {
					return nil, bad("container %q: hostIP %q is not an IP address", mc.Name, p.HostIP)
				}
				port.HostIP = ip
			}
			c.Ports = append(c.Ports, port)
		}
		s.Containers = append(s.Containers, c)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return s, nil
}
