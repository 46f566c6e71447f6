package store

import "errors"

// ErrCorrupt is returned when a state file cannot be read because its contents are damaged.
var ErrCorrupt = errors.New("state file is corrupt")
