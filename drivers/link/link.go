// Package link is the join sandbox mode (Docker's --network container:X; the containers of a
// Kubernetes pod): the sandbox joins another sandbox's network namespace and shares its interfaces,
// addresses and 127.0.0.1; nothing is created or removed. It is a mode of a sandbox
// (SandboxSpec.Join, podctl sandbox create --join), not a network driver: a network of it could
// never be attached, so netmgr refuses `network create --driver link`.
package link

import (
	"fmt"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Name is the mode's name, which netmgr refuses as a driver name.
const Name = "link"

// Namespace checks that target, the namespace of the sandbox to join, is a live one, and returns it.
func Namespace(target string) (string, error) {
	if target == "" {
		return "", fmt.Errorf("%w: a joining sandbox needs a target sandbox", drivers.ErrInvalid)
	}
	ns, err := sandbox.Open(target)
	if err != nil {
		return "", fmt.Errorf("%w: target namespace: %v", drivers.ErrNotFound, err)
	}
	ns.Close()
	return target, nil
}
