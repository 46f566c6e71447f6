package pod

import (
	"context"
	"time"
)

// RestartPolicy says whether a pod's containers are restarted when they exit, as a Kubernetes Pod's
// spec.restartPolicy does. The Manager only records it (on the sandbox, LabelRestartPolicy); a
// controller keeps it (netmgr/pod/keeper, run by the agent). The zero value is Never: unlike
// Kubernetes, whose default is Always, a pod here is kept only when asked, since keeping needs a
// running agent.
type RestartPolicy string

// Restart policies.
const (
	RestartAlways    RestartPolicy = "Always"
	RestartOnFailure RestartPolicy = "OnFailure"
	RestartNever     RestartPolicy = "Never"
)

// LabelRestartPolicy on a pod's sandbox holds its restart policy when it is not Never.
const LabelRestartPolicy = labelPrefix + "restart-policy"

func validRestartPolicy(p RestartPolicy) bool {
	switch p {
	case "", RestartAlways, RestartOnFailure, RestartNever:
		return true
	}
	return false
}

// RestartPolicy returns the pod's restart policy (Never when none was given).
func (p *Pod) RestartPolicy() RestartPolicy {
	if p.Sandbox != nil {
		if v := RestartPolicy(p.Sandbox.Labels[LabelRestartPolicy]); v != "" {
			return v
		}
	}
	return RestartNever
}

// Restarted is what a keeper records about a container's last exit and its restarts.
type Restarted struct {
	// Count is how often the container was restarted after it exited.
	Count int
	// ExitCode and ExitedAt are of its last exit; Reason is Kubernetes' word for it ("Error",
	// "Completed") or for what the keeper does about it ("CrashLoopBackOff" while it waits).
	ExitCode int
	ExitedAt time.Time
	Reason   string
}

// RestartRecorder is implemented by a Runtime that keeps a keeper's record with the container, so
// that Status and List report it (ContainerStatus.Restarts and Last*).
type RestartRecorder interface {
	RecordRestart(ctx context.Context, id string, r Restarted) error
}
