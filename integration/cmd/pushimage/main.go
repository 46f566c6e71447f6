// Command pushimage pushes a busybox image (the static busybox as one layer, integration.BusyboxImage)
// to a plain-HTTP registry on 127.0.0.1 inside a network namespace: what make demo serves its pods
// from.
//
//	go run ./integration/cmd/pushimage -netns PATH -registry 127.0.0.1:5000 -ref busybox:demo
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/netmgr/netmgr/integration"
	"github.com/netmgr/netmgr/sandbox"
)

func main() {
	netns := flag.String("netns", "", "network namespace the registry serves in (required)")
	host := flag.String("registry", "127.0.0.1:5000", "the registry's HOST:PORT in that namespace")
	ref := flag.String("ref", "busybox:demo", "REPO:TAG to push")
	cmd := flag.String("cmd", "sh", "the image's command, words separated by spaces")
	flag.Parse()
	if err := run(*netns, *host, *ref, strings.Fields(*cmd)); err != nil {
		fmt.Fprintln(os.Stderr, "pushimage:", err)
		os.Exit(1)
	}
}

func run(netns, host, ref string, cmd []string) error {
	if netns == "" {
		return fmt.Errorf("-netns is required (the registry never serves in the root namespace)")
	}
	ns, err := sandbox.Open(netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	img, err := integration.BusyboxImage(cmd...)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	full, err := integration.RegistryAt(ns, host).Push(ctx, ref, img)
	if err != nil {
		return err
	}
	fmt.Println(full)
	return nil
}
