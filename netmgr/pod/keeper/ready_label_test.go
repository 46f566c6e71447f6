package keeper

import (
	"testing"

	"github.com/netmgr/netmgr/netmgr/pod"
	"github.com/netmgr/netmgr/netmgr/service"
)

// The label the keeper's readiness probes keep is the one services read.
func TestReadyLabelIsTheServicesOne(t *testing.T) {
	if pod.LabelReady != service.LabelReady {
		t.Fatalf("pod.LabelReady %q, service.LabelReady %q", pod.LabelReady, service.LabelReady)
	}
}
