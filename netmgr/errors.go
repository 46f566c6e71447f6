package netmgr

import (
	"errors"
	"fmt"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/internal/flock"
	"github.com/netmgr/netmgr/netmgr/ipam"
	"github.com/netmgr/netmgr/netmgr/store"
)

// Sentinel errors; test them with errors.Is. They are the drivers' own, so a driver's ErrInvalid is
// netmgr's ErrInvalid.
var (
	ErrInvalid  = drivers.ErrInvalid
	ErrNotFound = drivers.ErrNotFound
	ErrExists   = drivers.ErrExists
	ErrFull     = drivers.ErrFull
	// ErrInUse reports a network or sandbox that others still depend on.
	ErrInUse = errors.New("in use")
	// ErrBusy reports an object another operation is working on right now.
	ErrBusy = flock.ErrBusy
)

// Error is the structured error of every Manager operation: what was done to which object, and why.
type Error struct {
	Op   string // "create", "delete", "attach", ...
	Kind string // "network" or "sandbox"
	Name string
	Err  error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s %q: %v", e.Op, e.Kind, e.Name, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

func opErr(op, kind, name string, err error) error {
	if err == nil {
		return nil
	}
	var me *Error
	if errors.As(err, &me) && me.Kind == kind && me.Name == name {
		return err
	}
	return &Error{Op: op, Kind: kind, Name: name, Err: classify(err)}
}

// classify makes errors from ipam and the store match netmgr's sentinels.
func classify(err error) error {
	switch {
	case errors.Is(err, ipam.ErrInvalid), errors.Is(err, ipam.ErrOutOfRange):
		if !errors.Is(err, ErrInvalid) {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	case errors.Is(err, ipam.ErrTaken):
		if !errors.Is(err, ErrExists) {
			return fmt.Errorf("%w: %w", ErrExists, err)
		}
	case errors.Is(err, ipam.ErrExhausted):
		if !errors.Is(err, ErrFull) {
			return fmt.Errorf("%w: %w", ErrFull, err)
		}
	case errors.Is(err, store.ErrConflict):
		if !errors.Is(err, ErrBusy) {
			return fmt.Errorf("%w: %w", ErrBusy, err)
		}
	case errors.Is(err, store.ErrNotFound):
		if !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
	}
	return err
}
