package pod

import (
	"context"
	"errors"
	"io"
	"time"
)

// ErrUnavailable reports a runtime that cannot be reached (containerd not running, wrong socket).
var ErrUnavailable = errors.New("container runtime unavailable")

// Runtime creates and runs containers. It is what the pod facade needs of a container runtime and no
// more; netmgr/pod/containerd.New returns the containerd one. Every method takes a container ID (see
// ContainerID). Delete and Stop treat a container that is already gone as done.
type Runtime interface {
	// Create records a container without starting it.
	Create(ctx context.Context, c ContainerConfig) error
	// Start starts the container's process; a container whose process has exited is started anew.
	Start(ctx context.Context, id string) error
	// Stop sends SIGTERM, then SIGKILL after grace, and waits for the process to exit. Zero grace
	// kills at once.
	Stop(ctx context.Context, id string, grace time.Duration) error
	// Delete stops the container and removes it with everything the runtime made for it (task,
	// snapshot, filesystem layer, log).
	Delete(ctx context.Context, id string) error
	// Exec runs a process in the running container and returns its exit status.
	Exec(ctx context.Context, id string, p ExecConfig) (int, error)
	// Logs copies the container's output (stdout and stderr, across restarts) to w; with follow it
	// goes on until ctx is done.
	Logs(ctx context.Context, id string, w io.Writer, follow bool) error
	// Status reports one container.
	Status(ctx context.Context, id string) (ContainerStatus, error)
	// List reports the containers labelled with the pod's name, or every pod's container if pod is "".
	List(ctx context.Context, pod string) ([]ContainerStatus, error)
}

// ContainerConfig is what a Runtime needs to create one container of a pod.
type ContainerConfig struct {
	ID   string
	Pod  string
	Spec ContainerSpec
	// NetNS is the path of the network namespace to join: the pod's sandbox.
	NetNS string
	// PausePID, if not zero, is a process whose UTS and IPC namespaces the container joins.
	PausePID int
	// Hostname is set in a UTS namespace of the container's own (when PausePID is zero).
	Hostname string
	Labels   map[string]string
	// ResolvConf and Hosts, if set, are files the runtime bind-mounts (read-only) on the container's
	// /etc/resolv.conf and /etc/hosts.
	ResolvConf, Hosts string
}

// ExecConfig is a process to run in a container.
type ExecConfig struct {
	Args   []string
	Env    []string // added to the container's environment
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// State of a container.
type State string

// States a container can be in.
const (
	StateCreated State = "created" // recorded, no process started yet
	StateRunning State = "running"
	StateStopped State = "stopped" // its process exited
	StateUnknown State = "unknown"
)

// ContainerStatus is one container as the runtime reports it.
type ContainerStatus struct {
	Name     string    `json:"name"`
	ID       string    `json:"id"`
	Pod      string    `json:"pod,omitempty"`
	Image    string    `json:"image"`
	State    State     `json:"state"`
	PID      uint32    `json:"pid,omitempty"`
	ExitCode uint32    `json:"exit_code"`
	ExitedAt time.Time `json:"exited_at,omitzero"`
	Created  time.Time `json:"created,omitzero"`
	// Restarts, LastExitCode, LastExitedAt and Reason are what a keeper recorded (RestartRecorder):
	// how often the container was restarted, its last exit, and why it is not running (or last was
	// not).
	Restarts     int       `json:"restarts"`
	LastExitCode *int      `json:"last_exit_code,omitempty"`
	LastExitedAt time.Time `json:"last_exited_at,omitzero"`
	Reason       string    `json:"reason,omitempty"`
	// Labels are the container's labels in the runtime (LabelProbes among them).
	Labels map[string]string `json:"-"`
}
