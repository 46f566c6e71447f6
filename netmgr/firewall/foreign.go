package firewall

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// A packet passes the forward hook only if every base chain there lets it: a drop in someone
// else's chain is final, whatever netmgr's own chain says. Docker (iptables -P FORWARD DROP), ufw
// and the like set that policy in iptables' filter table, which iptables-nft keeps in nftables as
// table ip filter and table ip6 filter. Where such a table has a FORWARD chain, netmgr adds, as
// netavark and the CNI firewall plugin do, one jump at its top to a chain of its own there (and
// where it has none yet, it makes the FORWARD chain as iptables-nft would, policy accept, so that
// a firewall started later finds the jump in place):
//
//	table ip filter {                      # and ip6
//		chain FORWARD { ...; jump NETMGR-FORWARD; <the owner's rules> }
//		chain NETMGR-FORWARD {
//			iifname B accept comment "network=N"   # for every bridge
//			oifname B accept comment "network=N"
//		}
//	}
//
// Accepting there only ends that chain: netmgr's own forward chain still isolates the bridges,
// guards unpublished ports and internal networks. The accepts come before the owner's rules, so
// rules the owner adds to FORWARD (Docker's DOCKER-USER, for one) do not see netmgr's traffic.
// With no network left the jump and the chain go, and the table is as it was (a table netmgr made
// goes too, if nobody has put anything in it). A firewall that flushes FORWARD (iptables -F) loses
// the jump until the next Apply (network create or remove, gc).
//
// iptables-legacy keeps its rules outside nftables, where netlink cannot reach them: netmgr can
// only detect its tables and warn (see Apply).
const (
	foreignTable   = "filter"
	foreignForward = "FORWARD"
	foreignChain   = "NETMGR-FORWARD"
)

var foreignFamilies = []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6}

func familyName(fam nftables.TableFamily) string {
	if fam == nftables.TableFamilyIPv6 {
		return "ip6"
	}
	return "ip"
}

// syncForeign makes the jumps and chains of the foreign filter tables what nets, which must be
// normalized, need: one transaction per family that has something to change.
func syncForeign(c *nftables.Conn, nets []Network) error {
	for _, fam := range foreignFamilies {
		if err := syncForeignFamily(c, fam, nets); err != nil {
			return fmt.Errorf("table %s %s chain %s: %w", familyName(fam), foreignTable, foreignForward, err)
		}
	}
	return nil
}

func syncForeignFamily(c *nftables.Conn, fam nftables.TableFamily, nets []Network) error {
	chains, err := c.ListChainsOfTableFamily(fam)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	var fwd, own *nftables.Chain
	tableChains := 0
	for _, ch := range chains {
		if ch.Table.Name != foreignTable {
			continue
		}
		tableChains++
		switch {
		case ch.Name == foreignForward && ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward:
			fwd = ch
		case ch.Name == foreignChain:
			own = ch
		}
	}
	if len(nets) == 0 && fwd == nil && own == nil {
		return nil
	}
	t := &nftables.Table{Name: foreignTable, Family: fam}
	var jumps []*nftables.Rule
	others := 0 // the owner's rules in FORWARD
	if fwd != nil {
		rules, err := c.GetRules(t, fwd)
		if err != nil {
			return fmt.Errorf("list rules: %w", err)
		}
		for _, r := range rules {
			if jumpsToOwn(r) {
				jumps = append(jumps, r)
			} else {
				others++
			}
		}
	}
	if len(nets) == 0 {
		for _, r := range jumps {
			if err := c.DelRule(r); err != nil {
				return err
			}
		}
		if own != nil {
			c.FlushChain(own)
			c.DelChain(own)
		}
		// A table that holds nothing but an empty FORWARD chain that accepts is the one netmgr
		// made (below), or one that changes nothing: it goes, and the namespace is as before.
		// (Table.Use cannot tell: google/nftables v0.3.0 decodes it in the wrong byte order.)
		ours := 1 // FORWARD
		if own != nil {
			ours++
		}
		if fwd != nil && others == 0 && fwd.Policy != nil && *fwd.Policy == nftables.ChainPolicyAccept && tableChains == ours {
			sets, err := c.GetSets(t)
			if err != nil {
				return fmt.Errorf("list sets: %w", err)
			}
			if len(sets) == 0 {
				c.DelTable(t)
			}
		}
		return c.Flush()
	}
	if fwd == nil {
		// No FORWARD chain yet: make the one iptables-nft makes (which it then takes as its own),
		// so that the jump is already there when Docker or ufw, started later, set its policy
		// to DROP. netavark and the CNI firewall plugin get the same from the iptables binary.
		accept := nftables.ChainPolicyAccept
		c.AddTable(t)
		fwd = c.AddChain(&nftables.Chain{Name: foreignForward, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	}
	ch := c.AddChain(&nftables.Chain{Name: foreignChain, Table: t})
	c.FlushChain(ch)
	for _, n := range nets {
		for _, b := range n.Ifaces {
			for _, key := range []expr.MetaKey{expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME} {
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, UserData: networkUserData(n.Name), Exprs: concat(
					ifnameCmp(key, expr.CmpOpEq, b),
					[]expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}},
				)})
			}
		}
	}
	if len(jumps) == 0 {
		c.InsertRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: []expr.Any{
			&expr.Verdict{Kind: expr.VerdictJump, Chain: foreignChain},
		}})
	}
	for _, r := range jumps[min(1, len(jumps)):] { // a second jump, from a race with another writer
		if err := c.DelRule(r); err != nil {
			return err
		}
	}
	return c.Flush()
}

func jumpsToOwn(r *nftables.Rule) bool {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) && v.Chain == foreignChain {
			return true
		}
	}
	return false
}

// legacyTables returns the iptables-legacy tables of the target namespace, as "iptables-legacy
// filter". procfs shows the namespace of the reading thread, so the files are read on a thread
// switched into the target namespace.
func (f *Firewall) legacyTables() ([]string, error) {
	var out []string
	err := inNetNS(f.nsFd, func() error {
		for _, src := range []struct{ tool, file string }{
			{"iptables-legacy", "ip_tables_names"},
			{"ip6tables-legacy", "ip6_tables_names"},
		} {
			b, err := os.ReadFile("/proc/thread-self/net/" + src.file)
			if errors.Is(err, fs.ErrNotExist) {
				continue // the legacy module is not loaded
			}
			if err != nil {
				return err
			}
			for _, name := range strings.Fields(string(b)) {
				out = append(out, src.tool+" "+name)
			}
		}
		return nil
	})
	return out, err
}

// inNetNS runs fn on a locked thread in the namespace of nsFd (the caller's if nsFd < 0). The
// calling thread is never switched; a thread that cannot switch back stays locked and ends with
// its goroutine.
func inNetNS(nsFd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if nsFd < 0 {
			defer runtime.UnlockOSThread()
			errc <- fn()
			return
		}
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(nsFd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// warnLegacy logs, once per Firewall and set of tables, that iptables-legacy tables exist, whose
// chains netmgr can neither see nor accept its traffic in.
func (f *Firewall) warnLegacy(ctx context.Context, ifaces []string) {
	tables, err := f.legacyTables()
	if err != nil {
		f.logger.DebugContext(ctx, "cannot look for iptables-legacy tables", "error", err)
		return
	}
	key := strings.Join(tables, ",")
	if len(tables) == 0 || key == f.legacyWarned {
		return
	}
	f.legacyWarned = key
	f.logger.WarnContext(ctx, "iptables-legacy tables exist in the host namespace; nftables cannot see or "+
		"override their chains, so if their FORWARD policy is DROP sandboxes have no egress and published "+
		"ports do not answer. netmgr does not write legacy rules (that needs the iptables binary): accept "+
		"the interfaces there yourself (iptables-legacy -I FORWARD -i IFACE -j ACCEPT, and -o IFACE), "+
		"or switch the host to iptables-nft",
		"legacy_tables", tables, "interfaces", ifaces)
}
