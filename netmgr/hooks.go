package netmgr

import (
	"fmt"
	"os"
)

// NETMGR_TEST_PAUSE_AT names a step at which every Manager of the process stops forever, so that crash
// tests can SIGKILL it there. Only binaries built with the netmgr_testhooks build tag read it
// (hooks_env.go): an embedder's environment never stops a Manager.

// envPauseAt is NETMGR_TEST_PAUSE_AT in binaries built with the netmgr_testhooks tag, else "".
var envPauseAt string

// Steps at which a test can stop a process (NETMGR_TEST_PAUSE_AT in a netmgr_testhooks build, or WithStepHook in
// the package's own tests).
const (
	StepSandboxReserved = "sandbox-create:reserved" // records and IPs written, kernel untouched
	StepSandboxNetNS    = "sandbox-create:netns"    // namespace pinned
	StepSandboxAttached = "sandbox-create:attached" // first endpoint plumbed
	StepSandboxComplete = "sandbox-create:complete" // pause running, ports published, records not final
	StepSandboxDeleting = "sandbox-delete:marked"   // delete intent recorded
	StepSandboxDetached = "sandbox-delete:detached" // endpoints detached
	StepSandboxUnpinned = "sandbox-delete:unpinned" // namespace removed, records not yet
	StepAttachReserved  = "attach:reserved"         // endpoint, addresses and intent written, kernel untouched
	StepAttachPlumbed   = "attach:plumbed"          // interface in the sandbox, record not final
	StepDetachMarked    = "detach:marked"           // detach intent recorded
	StepNetworkReserved = "network-create:reserved"
	StepNetworkCreated  = "network-create:created"
	StepNetworkDeleting = "network-delete:marked"
	StepNetworkRemoved  = "network-delete:removed"
)

func (m *Manager) step(name string) {
	if m.testStep != nil {
		m.testStep(name)
	}
	if m.pauseAt == "" || m.pauseAt != name {
		return
	}
	fmt.Fprintf(os.Stderr, "netmgr: paused at %s\n", name)
	select {}
}
