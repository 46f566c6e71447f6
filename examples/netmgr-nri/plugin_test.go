package main

import (
	"maps"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/netmgr/netmgr/netmgr"
)

// The pod's record carries its labels and netmgr-nri's own, never a label that netmgr-cni's GC would
// take for one of its attachments.
func TestLabels(t *testing.T) {
	pod := &api.PodSandbox{Id: "abc", Name: "web", Namespace: "prod", Uid: "u1", Ips: []string{"10.0.0.5", "fd00::5"},
		Labels: map[string]string{"app": "web", LabelPodID: "forged", "cni.netmgr.io/network": "pods"}}
	l := labels(pod, []extraNetwork{{Network: "a"}, {Network: "b"}}, nil)
	want := map[string]string{"app": "web", LabelPodID: "abc", LabelPod: "prod/web", LabelPodUID: "u1",
		LabelPrimaryIP: "10.0.0.5,fd00::5", LabelNetworks: "a,b"}
	if len(l) != len(want) {
		t.Fatalf("labels %v, want %v", l, want)
	}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("label %s = %q, want %q (all: %v)", k, l[k], v, l)
		}
	}
}

// With netmgr-cni's record of the pod found, the pod's labels go there (beside netmgr-cni's own, which
// a pod's labels never override) and not on the pod's netmgr-nri record: one endpoint per pod, at its
// primary address.
func TestPrimaryLabels(t *testing.T) {
	pod := &api.PodSandbox{Id: "abc", Name: "web", Namespace: "prod", Uid: "u1", Ips: []string{"10.0.0.5"},
		Labels: map[string]string{"app": "web", "cni.netmgr.io/network": "forged"}}
	cni := &netmgr.Sandbox{Name: "pods-abc-eth0", Labels: map[string]string{
		"cni.netmgr.io/network": "pods", cniContainerID: "abc", "cni.netmgr.io/ifname": "eth0", "stale": "x"}}
	if !isPrimary(cni, "abc") || isPrimary(cni, "abd") || isPrimary(&netmgr.Sandbox{Name: sandboxName("abc"), Labels: map[string]string{cniContainerID: "abc"}}, "abc") {
		t.Errorf("isPrimary wrong")
	}
	want := map[string]string{"app": "web", "cni.netmgr.io/network": "pods", cniContainerID: "abc", "cni.netmgr.io/ifname": "eth0", LabelPod: "prod/web"}
	if got := primaryLabels(cni, pod); !maps.Equal(got, want) {
		t.Errorf("primary record's labels %v, want %v", got, want)
	}
	l := labels(pod, nil, []string{"pods-abc-eth0"})
	if _, ok := l["app"]; ok || l[LabelPrimary] != "pods-abc-eth0" || l[LabelPodID] != "abc" {
		t.Errorf("netmgr-nri record's labels with a primary record: %v", l)
	}
}

func TestSandboxName(t *testing.T) {
	a, b := sandboxName(strings.Repeat("a", 64)), sandboxName(strings.Repeat("b", 64))
	if a == b || a != sandboxName(strings.Repeat("a", 64)) || !strings.HasPrefix(a, sandboxPrefix) || len(a) > 63 {
		t.Errorf("sandbox names %q, %q", a, b)
	}
}

func TestPodNetNS(t *testing.T) {
	pod := &api.PodSandbox{Linux: &api.LinuxPodSandbox{Namespaces: []*api.LinuxNamespace{{Type: "ipc"}, {Type: "network", Path: "/run/netns/x"}}}}
	if got := podNetNS(pod); got != "/run/netns/x" {
		t.Errorf("podNetNS = %q", got)
	}
	if got := podNetNS(&api.PodSandbox{}); got != "" {
		t.Errorf("podNetNS of a hostNetwork pod = %q", got)
	}
}
