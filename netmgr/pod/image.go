package pod

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/netmgr/netmgr/netmgr"
)

// PullPolicy says when a container's image is pulled, as Kubernetes' imagePullPolicy does.
type PullPolicy string

// Pull policies. The zero value is Kubernetes' default: Always for an image tagged :latest or not
// tagged at all, IfNotPresent otherwise (an image pinned by digest is never pulled twice).
const (
	PullAlways       PullPolicy = "Always"
	PullIfNotPresent PullPolicy = "IfNotPresent"
	PullNever        PullPolicy = "Never"
)

// ErrImageNotPresent reports an image that is not in the runtime's store while the pull policy is
// Never. errors.Is(ErrImageNotPresent, netmgr.ErrNotFound) holds.
var ErrImageNotPresent error = notPresent{}

type notPresent struct{}

func (notPresent) Error() string        { return "image not present" }
func (notPresent) Is(target error) bool { return target == netmgr.ErrNotFound }

// ErrPullRefused reports a registry that answered but refused the pull (unauthorized, forbidden).
var ErrPullRefused = errors.New("pull refused")

// ErrRegistryUnreachable reports a registry that could not be reached or did not answer in time.
var ErrRegistryUnreachable = errors.New("registry unreachable")

// ImagePuller is implemented by a Runtime that pulls images by reference. Run calls it for every
// container whose image is not a local root filesystem, before it creates anything, so that a pull
// that fails leaves no sandbox, address or container behind.
type ImagePuller interface {
	// EnsureImage makes ref present in the runtime's store as policy asks (an empty policy is the
	// default, see PullPolicy). It returns ErrImageNotPresent for Never and a missing image.
	EnsureImage(ctx context.Context, ref string, policy PullPolicy) error
}

// EffectivePullPolicy returns the policy a container's image is pulled with: its own, or
// Kubernetes' default for the reference.
func EffectivePullPolicy(ref string, p PullPolicy) PullPolicy {
	if p != "" {
		return p
	}
	if strings.Contains(ref, "@") {
		return PullIfNotPresent
	}
	name := ref
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	if _, tag, ok := strings.Cut(name, ":"); !ok || tag == "latest" {
		return PullAlways
	}
	return PullIfNotPresent
}

func validPullPolicy(p PullPolicy) bool {
	switch p {
	case "", PullAlways, PullIfNotPresent, PullNever:
		return true
	}
	return false
}

// pullImages makes every image of the spec present, if the runtime pulls images.
func (m *Manager) pullImages(ctx context.Context, spec Spec) error {
	puller, ok := m.rt.(ImagePuller)
	if !ok {
		return nil
	}
	done := map[string]bool{}
	for _, c := range spec.Containers {
		if _, local := LocalRootFS(c.Image); local {
			continue
		}
		key := c.Image + "\x00" + string(c.ImagePullPolicy)
		if done[key] {
			continue
		}
		done[key] = true
		if err := puller.EnsureImage(ctx, c.Image, c.ImagePullPolicy); err != nil {
			return fmt.Errorf("container %q: %w", c.Name, err)
		}
	}
	return nil
}
