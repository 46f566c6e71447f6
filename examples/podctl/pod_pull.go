//go:build podctl_pod

package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/netmgr/netmgr/netmgr/pod/containerd"
)

// Image pull flags of the pod commands.
var (
	insecureRegistries []string
	registryTimeout    time.Duration
	pullProgress       string
)

func addPullFlags(pf *pflag.FlagSet) {
	pf.StringArrayVar(&insecureRegistries, "insecure-registry", nil, "reach registry HOST[:PORT] over plain HTTP (repeatable); every other registry is reached over HTTPS only")
	pf.DurationVar(&registryTimeout, "registry-timeout", containerd.DefaultRegistryTimeout, "bound on connecting to a registry and on each of its answers")
	pf.StringVar(&pullProgress, "progress", "auto", "image pull progress on stderr: auto (a line per layer on a terminal, none otherwise), plain (always), quiet")
}

// pullOptions returns the containerd Runtime's options for pulling images as the flags say.
func (g *globals) pullOptions() ([]containerd.Option, error) {
	if registryTimeout <= 0 {
		return nil, fmt.Errorf("--registry-timeout %s: want a positive duration", registryTimeout)
	}
	opts := []containerd.Option{containerd.WithInsecureRegistries(insecureRegistries...), containerd.WithRegistryTimeout(registryTimeout)}
	var show bool
	switch pullProgress {
	case "auto":
		show = isTerminal(g.stderr)
	case "plain":
		show = true
	case "quiet":
	default:
		return nil, fmt.Errorf("--progress %q: want auto, plain or quiet", pullProgress)
	}
	if show {
		opts = append(opts, containerd.WithPullProgress(progressPrinter(g.stderr)))
	}
	return opts, nil
}

// progressPrinter prints a line when a pull starts fetching an image and a line per layer once it is
// fetched, with its size, as nerdctl and podman do.
func progressPrinter(w io.Writer) func(containerd.PullProgress) {
	var mu sync.Mutex
	started := map[string]bool{}
	return func(p containerd.PullProgress) {
		mu.Lock()
		defer mu.Unlock()
		if !started[p.Image] {
			started[p.Image] = true
			fmt.Fprintf(w, "pulling %s\n", p.Image)
		}
		if !p.Layer || !p.Done {
			return
		}
		d := p.Digest
		if len(d) > 19 {
			d = d[:19] // sha256: and 12 hex digits
		}
		fmt.Fprintf(w, "  layer %s  %s done\n", d, humanBytes(p.Bytes))
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
