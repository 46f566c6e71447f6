//go:build !podctl_pod

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// podArgs are the arguments podctl was run with, handed on unchanged to podctl-pod.
var podArgs []string

func rememberArgs(args []string) { podArgs = args }

// PodBinary is the sibling binary that serves `podctl pod ...`: this same CLI built with
// -tags podctl_pod, which links the containerd client. podctl itself does not, because the client's
// package initialisation (protobuf descriptors, image-reference patterns) would add about ten
// milliseconds to every network and sandbox command, which are meant to be cheap per process.
const PodBinary = "podctl-pod"

func newPodCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:                "pod",
		Short:              "Run pods: a sandbox and its containers on containerd (served by " + PodBinary + ")",
		DisableFlagParsing: true,
		RunE:               func(*cobra.Command, []string) error { return execFull("pod commands") },
	}
}

// execFull replaces podctl with PodBinary, run with podctl's own arguments; what says what needs it.
func execFull(what string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("%s: find own executable: %w", what, err)
	}
	path := filepath.Join(filepath.Dir(exe), PodBinary)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s are served by %s, which is missing next to podctl (make build puts both in ./bin)", what, path)
	}
	return syscall.Exec(path, append([]string{"podctl"}, podArgs...), os.Environ())
}
