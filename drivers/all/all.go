// Package all links every network driver of this module into a program, for its side effect: each
// driver registers itself with package drivers when it is initialised.
//
//	import _ "github.com/netmgr/netmgr/drivers/all"
//
// A Manager on its own registers only bridge, the default driver (host and link are sandbox modes,
// kept here so that every package under drivers/ is linked). A program that wants the others imports them one by one
// (drivers/macvlan, drivers/cni) or all of them here. drivers/cni links libcni, and through it
// OpenTelemetry and net/http: an embedder who does not need CNI delegation should import the drivers
// it uses instead of this package. podctl and netmgr-cni import it, so they offer every driver.
package all

import (
	_ "github.com/netmgr/netmgr/drivers/bridge"
	_ "github.com/netmgr/netmgr/drivers/cni"
	_ "github.com/netmgr/netmgr/drivers/host"
	_ "github.com/netmgr/netmgr/drivers/link"
	_ "github.com/netmgr/netmgr/drivers/macvlan"
	_ "github.com/netmgr/netmgr/drivers/overlay"
	_ "github.com/netmgr/netmgr/drivers/routed"
)
