package pod

import (
	"errors"
	"strings"
	"testing"

	"github.com/netmgr/netmgr/netmgr"
)

func TestEffectivePullPolicy(t *testing.T) {
	for ref, want := range map[string]PullPolicy{
		"busybox":                                   PullAlways,
		"busybox:latest":                            PullAlways,
		"127.0.0.1:5000/busybox":                    PullAlways, // the port is not a tag
		"127.0.0.1:5000/busybox:test":               PullIfNotPresent,
		"registry.example/a/b:1.2":                  PullIfNotPresent,
		"busybox@sha256:" + strings.Repeat("a", 64): PullIfNotPresent,
	} {
		if got := EffectivePullPolicy(ref, ""); got != want {
			t.Errorf("%s: %s, want %s", ref, got, want)
		}
		if got := EffectivePullPolicy(ref, PullNever); got != PullNever {
			t.Errorf("%s with Never: %s", ref, got)
		}
	}
	if !errors.Is(ErrImageNotPresent, netmgr.ErrNotFound) {
		t.Error("ErrImageNotPresent is not ErrNotFound")
	}
}

func TestManifestPullPolicy(t *testing.T) {
	m := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: busybox:1, imagePullPolicy: POLICY}\n"
	s, err := ParseManifest([]byte(strings.ReplaceAll(m, "POLICY", "Never")))
	if err != nil || s.Containers[0].ImagePullPolicy != PullNever {
		t.Fatalf("Never: %+v %v", s, err)
	}
	_, err = ParseManifest([]byte(strings.ReplaceAll(m, "POLICY", "Sometimes")))
	if !errors.Is(err, netmgr.ErrInvalid) || !strings.Contains(err.Error(), `imagePullPolicy "Sometimes"`) {
		t.Fatalf("Sometimes: %v", err)
	}
}
