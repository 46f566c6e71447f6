package pod_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/netmgr/netmgr/netmgr"
	"github.com/netmgr/netmgr/netmgr/pod"
	"github.com/netmgr/netmgr/netmgr/pod/containerd"
)

// Run a pod of two containers on a bridge network, exec in one, restart the other, and remove it.
// It needs root, a network named "pods" and a containerd, so it is compiled but not run.
func Example() {
	ctx := context.Background()
	nm, err := netmgr.New(ctx, netmgr.WithPauseBinary("/usr/local/bin/pause"))
	if err != nil {
		log.Fatal(err)
	}
	defer nm.Close()
	rt, err := containerd.New(ctx, containerd.DefaultAddress)
	if err != nil {
		log.Fatal(err) // "container runtime unavailable: cannot reach containerd at ..."
	}
	defer rt.Close()
	pm := pod.New(nm, rt)

	spec, err := pod.ParseManifest([]byte(`
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - {name: httpd, image: rootfs:/srv/busybox, command: [httpd, -f, -p, "8080"]}
  - {name: probe, image: rootfs:/srv/busybox, command: [sleep, "3600"]}
`))
	if err != nil {
		log.Fatal(err)
	}
	spec.Networks = []netmgr.AttachSpec{{Network: "pods"}}
	p, err := pm.Run(ctx, *spec)
	if err != nil {
		log.Fatal(err) // nothing of the pod is left
	}
	fmt.Println(p.Name, p.IPs(), p.Timing.Network, p.Timing.Containers)

	code, err := pm.Exec(ctx, "web", "probe", pod.ExecConfig{Args: []string{"wget", "-qO-", "http://127.0.0.1:8080/"}, Stdout: os.Stdout})
	fmt.Println(code, err)
	if err := pm.Restart(ctx, "web", "httpd"); err != nil { // same IP afterwards
		log.Fatal(err)
	}
	if err := pm.Remove(ctx, "web"); err != nil {
		log.Fatal(err)
	}
}
