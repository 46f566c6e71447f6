package containerd

import (
	"context"
	"strconv"
	"time"

	"github.com/netmgr/netmgr/netmgr/pod"
)

// Labels on a container that keep a keeper's record (pod.Restarted).
const (
	labelRestarts     = "netmgr.io/restarts"
	labelLastExitCode = "netmgr.io/last-exit-code"
	labelLastExitedAt = "netmgr.io/last-exited-at"
	labelReason       = "netmgr.io/reason"
)

var _ pod.RestartRecorder = (*Runtime)(nil)

// RecordRestart implements pod.RestartRecorder: the record is kept in the container's labels.
func (r *Runtime) RecordRestart(ctx context.Context, id string, rec pod.Restarted) error {
	ctx = r.ctx(ctx)
	ctr, err := r.c.LoadContainer(ctx, id)
	if err != nil {
		return containerdErr(err)
	}
	labels := map[string]string{
		labelRestarts:     strconv.Itoa(rec.Count),
		labelLastExitCode: strconv.Itoa(rec.ExitCode),
		labelReason:       rec.Reason,
		labelLastExitedAt: "",
	}
	if !rec.ExitedAt.IsZero() {
		labels[labelLastExitedAt] = rec.ExitedAt.UTC().Format(time.RFC3339Nano)
	}
	_, err = ctr.SetLabels(ctx, labels)
	return containerdErr(err)
}

// restartRecord fills a status's keeper record from the container's labels.
func restartRecord(s *pod.ContainerStatus, labels map[string]string) {
	if n, err := strconv.Atoi(labels[labelRestarts]); err == nil {
		s.Restarts = n
	}
	if v, ok := labels[labelLastExitCode]; ok {
		if n, err := strconv.Atoi(v); err == nil {
			s.LastExitCode = &n
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, labels[labelLastExitedAt]); err == nil {
		s.LastExitedAt = t
	}
	s.Reason = labels[labelReason]
}
