package sandbox

import specs "github.com/opencontainers/runtime-spec/specs-go"

// LinuxNamespace returns the runtime-spec entry that makes a container join this namespace.
func (n *NetNS) LinuxNamespace() specs.LinuxNamespace {
	return LinuxNamespace(n.path)
}

// LinuxNamespace returns the runtime-spec entry that makes a container join the namespace pinned at path.
func LinuxNamespace(path string) specs.LinuxNamespace {
	return specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path}
}

// JoinSpec replaces (or adds) the network namespace of an OCI spec with the one pinned at path.
func JoinSpec(s *specs.Spec, path string) {
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	for i, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			s.Linux.Namespaces[i].Path = path
			return
		}
	}
	s.Linux.Namespaces = append(s.Linux.Namespaces, LinuxNamespace(path))
}
