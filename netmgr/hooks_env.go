//go:build netmgr_testhooks

package netmgr

import "os"

const pauseEnv = "NETMGR_TEST_PAUSE_AT"

// Crash tests build podctl with -tags netmgr_testhooks so that NETMGR_TEST_PAUSE_AT stops it at a step.
func init() { envPauseAt = os.Getenv(pauseEnv) }
