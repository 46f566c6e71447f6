package drivers

import (
	"fmt"
	"strings"
)

// MaxIfNameLen is the longest interface name Linux accepts (IFNAMSIZ - 1).
const MaxIfNameLen = 15

// CheckIfName returns an ErrInvalid error unless name is a valid Linux interface name.
func CheckIfName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s name is empty", ErrInvalid, what)
	case len(name) > MaxIfNameLen:
		return fmt.Errorf("%w: %s name %q is %d bytes, the kernel allows at most %d", ErrInvalid, what, name, len(name), MaxIfNameLen)
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("%w: %s name %q contains a character the kernel refuses", ErrInvalid, what, name)
	}
	return nil
}
