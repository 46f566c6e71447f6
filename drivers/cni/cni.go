package cni

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/netmgr/netmgr/drivers"
	"github.com/netmgr/netmgr/sandbox"
)

// Name is the driver's registry name.
const Name = "cni"

// Option keys of a cni network.
const (
	OptConfList = "conflist" // path of a .conflist or .conf file
	OptConfDir  = "confdir"  // directory searched for the network called OptName
	OptName     = "name"     // the CNI network name; filled in from the configuration
	OptPath     = "path"     // colon-separated plugin directories
	OptCacheDir = "cachedir" // libcni's result cache
)

// DefaultPath is where the driver looks for plugin binaries unless told otherwise: the upstream
// location first, then Debian's.
const DefaultPath = "/opt/cni/bin:/usr/lib/cni"

func init() { drivers.Register(Name, New) }

// Driver implements drivers.Driver by running CNI plugins.
type Driver struct {
	env drivers.Env
	log *slog.Logger
}

// New returns a cni driver that runs plugins from inside env.Host.
func New(env drivers.Env) (drivers.Driver, error) {
	if env.Host == nil {
		return nil, fmt.Errorf("cni driver: %w: no host namespace", drivers.ErrInvalid)
	}
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{env: env, log: log.With("driver", Name)}, nil
}

var knownOpts = map[string]bool{OptConfList: true, OptConfDir: true, OptName: true, OptPath: true, OptCacheDir: true}

// PrepareNetwork implements drivers.Driver: it loads the configuration, checks that every plugin it
// names is installed, and records the CNI network name and the default directories in the options.
func (d *Driver) PrepareNetwork(n *drivers.Network, existing []*drivers.Network) error {
	if n.Options == nil {
		n.Options = map[string]string{}
	}
	for k := range n.Options {
		if !knownOpts[k] {
			return fmt.Errorf("%w: unknown cni option %q (known: conflist, confdir, name, path, cachedir)", drivers.ErrInvalid, k)
		}
	}
	if len(n.Subnets) > 0 {
		return fmt.Errorf("%w: a cni network takes no subnets: the CNI configuration's IPAM assigns addresses", drivers.ErrInvalid)
	}
	if n.Internal {
		return fmt.Errorf("%w: a cni network cannot be internal: its plugins decide the routes", drivers.ErrInvalid)
	}
	switch {
	case n.Options[OptConfList] != "" && n.Options[OptConfDir] != "":
		return fmt.Errorf("%w: give either conflist or confdir, not both", drivers.ErrInvalid)
	case n.Options[OptConfList] == "" && n.Options[OptConfDir] == "":
		return fmt.Errorf("%w: a cni network needs option conflist=FILE, or confdir=DIR with name=NETWORK", drivers.ErrInvalid)
	case n.Options[OptConfDir] != "" && n.Options[OptName] == "":
		n.Options[OptName] = n.Name
	}
	if n.Options[OptPath] == "" {
		n.Options[OptPath] = DefaultPath
	}
	if n.Options[OptCacheDir] == "" {
		n.Options[OptCacheDir] = libcni.CacheDir
	}
	list, err := loadList(n)
	if err != nil {
		return fmt.Errorf("%w: %v", drivers.ErrInvalid, err)
	}
	if n.Options[OptName] == "" {
		n.Options[OptName] = list.Name
	}
	for _, p := range list.Plugins {
		if _, err := invoke.FindInPath(p.Network.Type, paths(n)); err != nil {
			return fmt.Errorf("%w: CNI network %q: plugin %q is not installed in %s", drivers.ErrInvalid, list.Name, p.Network.Type, n.Options[OptPath])
		}
	}
	return nil
}

// loadList reads the network's configuration as it is now on disk.
func loadList(n *drivers.Network) (*libcni.NetworkConfigList, error) {
	if f := n.Options[OptConfList]; f != "" {
		if !filepath.IsAbs(f) {
			return nil, fmt.Errorf("conflist %q is not an absolute path", f)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("load CNI configuration: %w", err)
		}
		list, err := libcni.NetworkConfFromBytes(asList(b))
		if err != nil {
			return nil, fmt.Errorf("load CNI configuration %s: %w", f, err)
		}
		if len(list.Plugins) == 0 {
			return nil, fmt.Errorf("load CNI configuration %s: no plugins", f)
		}
		return list, nil
	}
	list, err := libcni.LoadNetworkConf(n.Options[OptConfDir], n.Options[OptName])
	if err != nil {
		return nil, fmt.Errorf("load CNI network %q from %s: %w", n.Options[OptName], n.Options[OptConfDir], err)
	}
	return list, nil
}

// asList wraps a single-plugin configuration (a .conf file, which libcni no longer reads itself) into
// a list of one, as runtimes have always treated it; a list is returned as it is.
func asList(b []byte) []byte {
	var probe map[string]json.RawMessage
	if json.Unmarshal(b, &probe) != nil {
		return b // let libcni report the syntax error
	}
	if _, ok := probe["plugins"]; ok {
		return b
	}
	list := map[string]json.RawMessage{"plugins": json.RawMessage("[" + string(b) + "]")}
	for _, k := range []string{"cniVersion", "name"} {
		if v, ok := probe[k]; ok {
			list[k] = v
		}
	}
	out, err := json.Marshal(list)
	if err != nil {
		return b
	}
	return out
}

func paths(n *drivers.Network) []string {
	return filepath.SplitList(n.Options[OptPath])
}

func (d *Driver) config(n *drivers.Network) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(paths(n), n.Options[OptCacheDir], nil)
}

// CreateNetwork implements drivers.Driver. The delegated plugins create their plumbing on the first
// ADD, so this only checks that the configuration still loads.
func (d *Driver) CreateNetwork(ctx context.Context, n *drivers.Network) error {
	_, err := loadList(n)
	return err
}

// DeleteNetwork implements drivers.Driver. CNI has no network-level delete: what plugins leave
// (a bridge, say) stays, as with every CNI runtime.
func (d *Driver) DeleteNetwork(ctx context.Context, n *drivers.Network) error { return nil }

// ProvidesAddresses implements drivers.AddressProvider: the CNI configuration's IPAM decides.
func (d *Driver) ProvidesAddresses(n *drivers.Network) bool { return true }

// PrepareEndpoint implements drivers.Driver.
func (d *Driver) PrepareEndpoint(n *drivers.Network, ep *drivers.Endpoint) error {
	if err := drivers.CheckIfName("interface", ep.IfName); err != nil {
		return err
	}
	if ep.MAC != "" {
		if _, err := net.ParseMAC(ep.MAC); err != nil {
			return fmt.Errorf("%w: mac %q: %v", drivers.ErrInvalid, ep.MAC, err)
		}
	}
	return nil
}

func runtimeConf(ep *drivers.Endpoint, netns string) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: ep.ID, NetNS: netns, IfName: ep.IfName}
	if ep.MAC != "" {
		// Passed only to plugins that declare the capability, as runtimes do.
		rt.CapabilityArgs = map[string]any{"mac": ep.MAC}
	}
	return rt
}

// Attach implements drivers.Driver: ADD through the whole list, then record the addresses, default
// gateways and MAC the result reports for the sandbox's interface.
func (d *Driver) Attach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS) (err error) {
	list, err := loadList(n)
	if err != nil {
		return fmt.Errorf("attach %s: %w", ep.Sandbox, err)
	}
	cfg := d.config(n)
	rt := runtimeConf(ep, sb.Path())
	var res types.Result
	err = d.env.Host.Do(func() (err error) {
		res, err = cfg.AddNetworkList(ctx, list, rt)
		return err
	})
	if err != nil {
		return fmt.Errorf("attach %s: CNI network %q: %w", ep.Sandbox, list.Name, err)
	}
	d.log.Debug("CNI ADD done", "sandbox", ep.Sandbox, "network", n.Name, "ifname", ep.IfName)
	defer func() {
		if err != nil {
			if derr := d.del(ctx, cfg, list, rt); derr != nil {
				d.log.Warn("rollback: CNI DEL", "sandbox", ep.Sandbox, "network", n.Name, "error", derr)
			}
		}
	}()
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return fmt.Errorf("attach %s: CNI network %q: result: %w", ep.Sandbox, list.Name, err)
	}
	addrs, gws, mac := fromResult(r, ep.IfName, sb.Path())
	ep.Addrs, ep.Gateways = addrs, gws
	if mac != "" {
		ep.MAC = mac
	}
	return nil
}

func (d *Driver) del(ctx context.Context, cfg *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return d.env.Host.Do(func() error { return cfg.DelNetworkList(ctx, list, rt) })
}

// fromResult picks what belongs to the interface ifname in namespace netns: its addresses, one
// default gateway per family, and its MAC. IPs without an interface index belong to it too, as the
// spec lets single-interface plugins omit the index.
func fromResult(r *types100.Result, ifname, netns string) (addrs []netip.Prefix, gws []netip.Addr, mac string) {
	idx := -1
	for i, intf := range r.Interfaces {
		if intf.Name == ifname && (intf.Sandbox == "" || intf.Sandbox == netns) {
			idx, mac = i, intf.Mac
			if intf.Sandbox != "" {
				break // the sandbox side wins over a host interface of the same name
			}
		}
	}
	gwOf := map[bool]netip.Addr{}
	for _, ipc := range r.IPs {
		if ipc.Interface != nil && *ipc.Interface != idx {
			continue
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		ones, _ := ipc.Address.Mask.Size()
		addrs = append(addrs, netip.PrefixFrom(a, ones))
		if g, ok := netip.AddrFromSlice(ipc.Gateway); ok && !gwOf[a.Is4()].IsValid() {
			gwOf[a.Is4()] = g.Unmap()
		}
	}
	seen := map[bool]bool{}
	for _, rt := range r.Routes {
		if rt == nil {
			continue
		}
		if ones, _ := rt.Dst.Mask.Size(); ones != 0 {
			continue
		}
		v4 := rt.Dst.IP.To4() != nil
		gw, ok := netip.AddrFromSlice(rt.GW)
		if !ok {
			gw = gwOf[v4]
		}
		if gw.IsValid() && !seen[v4] {
			seen[v4] = true
			gws = append(gws, gw.Unmap())
		}
	}
	return addrs, gws, mac
}

// Detach implements drivers.Driver: DEL through the whole list, with no namespace when sb is nil,
// which the spec requires plugins to accept. If the configuration file is gone, the copy libcni cached
// at ADD is used.
func (d *Driver) Detach(ctx context.Context, n *drivers.Network, ep *drivers.Endpoint, sb *sandbox.NetNS, opts drivers.DetachOptions) error {
	netns := ""
	if sb != nil {
		netns = sb.Path()
	}
	cfg := d.config(n)
	rt := runtimeConf(ep, netns)
	list, err := loadList(n)
	if err != nil {
		cached, _, cerr := cfg.GetNetworkListCachedConfig(&libcni.NetworkConfigList{Name: n.Options[OptName]}, rt)
		if cerr != nil || cached == nil {
			if cerr == nil {
				cerr = os.ErrNotExist
			}
			return fmt.Errorf("detach %s: %w (and no cached copy: %v); restore the configuration, then delete again", ep.Sandbox, err, cerr)
		}
		if list, err = libcni.NetworkConfFromBytes(cached); err != nil {
			return fmt.Errorf("detach %s: cached CNI configuration: %w", ep.Sandbox, err)
		}
	}
	if err := d.del(ctx, cfg, list, rt); err != nil {
		return fmt.Errorf("detach %s: CNI network %q: %w", ep.Sandbox, list.Name, err)
	}
	d.log.Debug("CNI DEL done", "sandbox", ep.Sandbox, "network", n.Name, "ifname", ep.IfName)
	return nil
}

var _ drivers.AddressProvider = (*Driver)(nil)
