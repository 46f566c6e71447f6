package ctdopts

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestOptionsJoinNamespaces(t *testing.T) {
	s := &oci.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}, {Type: specs.PIDNamespace}}}}
	for _, o := range []oci.SpecOpts{WithNetNS("/run/netmgr/netns/a"), WithPauseNamespaces(42)} {
		if err := o(context.Background(), nil, &containers.Container{}, s); err != nil {
			t.Fatal(err)
		}
	}
	want := map[specs.LinuxNamespaceType]string{
		specs.NetworkNamespace: "/run/netmgr/netns/a",
		specs.PIDNamespace:     "",
		specs.UTSNamespace:     "/proc/42/ns/uts",
		specs.IPCNamespace:     "/proc/42/ns/ipc",
	}
	if len(s.Linux.Namespaces) != len(want) {
		t.Fatalf("namespaces %+v", s.Linux.Namespaces)
	}
	for _, ns := range s.Linux.Namespaces {
		if p, ok := want[ns.Type]; !ok || p != ns.Path {
			t.Errorf("%s: path %q, want %q", ns.Type, ns.Path, p)
		}
	}
}
