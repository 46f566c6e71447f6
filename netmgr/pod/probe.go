package pod

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/netmgr/netmgr/netmgr"
)

// Probe is a container's readiness or liveness probe, as Kubernetes' is: one of Exec (a command run
// in the container; exit 0 succeeds), TCPPort (a connection opens) or HTTPPort (GET HTTPPath answers
// 200-399), run from the pod's network namespace by the agent's keeper (netmgr/pod/keeper).
type Probe struct {
	Exec     []string `json:"exec,omitempty"`
	TCPPort  uint16   `json:"tcp_port,omitempty"`
	HTTPPort uint16   `json:"http_port,omitempty"`
	HTTPPath string   `json:"http_path,omitempty"`
	// Host to connect to; default the pod's IP (its first address), else 127.0.0.1.
	Host string `json:"host,omitempty"`
	// Kubernetes' defaults: no initial delay, every 10 s, a 1 s timeout, 3 failures to fail, 1
	// success to succeed.
	InitialDelay     time.Duration `json:"initial_delay,omitempty"`
	Period           time.Duration `json:"period,omitempty"`
	Timeout          time.Duration `json:"timeout,omitempty"`
	FailureThreshold int           `json:"failure_threshold,omitempty"`
	SuccessThreshold int           `json:"success_threshold,omitempty"`
}

// Probes are a container's probes, kept in its LabelProbes label.
type Probes struct {
	Readiness *Probe `json:"readiness,omitempty"`
	Liveness  *Probe `json:"liveness,omitempty"`
}

// Labels of probes. LabelProbes on a container holds its Probes (JSON). LabelReady on a pod's sandbox
// holds "true" or "false" when any of its containers has a readiness probe: set "false" by Run, and
// kept by the keeper ("true" once every container with a readiness probe runs and passes it). A
// sandbox without the label has no readiness probe: it is ready when it runs. A services controller
// routes only to sandboxes whose LabelReady is not "false".
// LabelReadySince holds when the keeper last changed LabelReady (RFC 3339, nanoseconds).
const (
	LabelProbes     = labelPrefix + "probes"
	LabelReady      = labelPrefix + "ready"
	LabelReadySince = labelPrefix + "ready-since"
)

// WithDefaults returns the probe with Kubernetes' defaults filled in.
func (p Probe) WithDefaults() Probe {
	if p.Period <= 0 {
		p.Period = 10 * time.Second
	}
	if p.Timeout <= 0 {
		p.Timeout = time.Second
	}
	if p.FailureThreshold <= 0 {
		p.FailureThreshold = 3
	}
	if p.SuccessThreshold <= 0 {
		p.SuccessThreshold = 1
	}
	return p
}

func (p *Probe) validate(what string) error {
	if p == nil {
		return nil
	}
	n := 0
	if len(p.Exec) > 0 {
		n++
	}
	if p.TCPPort != 0 {
		n++
	}
	if p.HTTPPort != 0 {
		n++
	}
	if n != 1 {
		return fmt.Errorf("%w: %s: want exactly one of exec, tcpSocket and httpGet", netmgr.ErrInvalid, what)
	}
	if p.InitialDelay < 0 || p.Period < 0 || p.Timeout < 0 || p.FailureThreshold < 0 || p.SuccessThreshold < 0 {
		return fmt.Errorf("%w: %s: negative delay, period, timeout or threshold", netmgr.ErrInvalid, what)
	}
	return nil
}

// ProbesOf returns the probes recorded on a container, if any.
func ProbesOf(c ContainerStatus) (Probes, bool) {
	var ps Probes
	v := c.Labels[LabelProbes]
	if v == "" || json.Unmarshal([]byte(v), &ps) != nil {
		return Probes{}, false
	}
	return ps, ps.Readiness != nil || ps.Liveness != nil
}

// Ready returns the pod's readiness as recorded on its sandbox (LabelReady), or nil if it has no
// readiness probe.
func (p *Pod) Ready() *bool {
	if p.Sandbox == nil {
		return nil
	}
	v, ok := p.Sandbox.Labels[LabelReady]
	if !ok {
		return nil
	}
	r := v == "true"
	return &r
}

// ReadySince returns when the keeper last changed the pod's readiness (zero if it never did).
func (p *Pod) ReadySince() time.Time {
	if p.Sandbox == nil {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, p.Sandbox.Labels[LabelReadySince])
	return t
}
