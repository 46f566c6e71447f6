package main

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/store"
	"github.com/netmgr/netmgr/sandbox"
)

// Plugin-specific CNI error codes (the spec reserves 100 and up for plugins).
const (
	// ErrNetworkFull: no free address left in the network's subnets, or the bridge has no free port.
	ErrNetworkFull uint = 100
	// ErrExists: the requested static address or host port is taken, or the interface already exists
	// in the netns.
	ErrExists uint = 101
	// ErrAttachmentExists: ADD for a container ID and interface that are attached already, but in
	// another netns, or with other addresses, MAC or port mappings than this ADD asks for.
	ErrAttachmentExists uint = 102
	// ErrCheckFailed: CHECK found the attachment different from what ADD made.
	ErrCheckFailed uint = 103
)

func invalidConf(format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, a...), "")
}

func checkFailed(format string, a ...any) *types.Error {
	return types.NewError(ErrCheckFailed, fmt.Sprintf(format, a...), "")
}

// cniError turns a netmgr error into the CNI error a runtime and its operator can act on. Errors that
// already are CNI errors pass through.
func cniError(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	code := types.ErrInternal
	switch {
	case errors.Is(err, store.ErrCorrupt):
		// Not "try again later" (11): nothing clears it but an operator moving the file aside.
		code = types.ErrInternal
	case errors.As(err, new(*netnsError)):
		code = types.ErrInvalidNetNS
	case errors.Is(err, netmgr.ErrBusy):
		code = types.ErrTryAgainLater
	case errors.Is(err, netmgr.ErrInvalid), errors.Is(err, netmgr.ErrInUse):
		// ErrInUse comes from creating the network: its subnet overlaps another network's.
		code = types.ErrInvalidNetworkConfig
	case errors.Is(err, netmgr.ErrFull):
		code = ErrNetworkFull
	case errors.Is(err, netmgr.ErrExists):
		code = ErrExists
	case errors.Is(err, netmgr.ErrNotFound):
		// The netns is checked first (netnsError); what else an ADD needs and may miss comes from the
		// configuration, such as a macvlan parent interface.
		code = types.ErrInvalidNetworkConfig
	}
	return types.NewError(code, err.Error(), "")
}

// netnsError is a container network namespace that cannot be used: CNI error 8.
type netnsError struct{ err error }

func (e *netnsError) Error() string { return e.err.Error() }
func (e *netnsError) Unwrap() error { return e.err }

// checkNetNS opens the namespace the runtime named, so that a bad CNI_NETNS is told apart from
// everything else netmgr may not find.
func checkNetNS(path string) error {
	ns, err := sandbox.Open(path)
	if err != nil {
		return &netnsError{err: fmt.Errorf("container netns: %w", err)}
	}
	return ns.Close()
}
