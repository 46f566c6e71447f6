package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/netmgr/netmgr/netmgr"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
}

// list joins items with commas; an empty list is "-" so that every table column has a word.
func list[T any](items []T) string {
	if len(items) == 0 {
		return "-"
	}
	s := make([]string, len(items))
	for i, it := range items {
		s[i] = fmt.Sprint(it)
	}
	return strings.Join(s, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// sandboxJSON is a Sandbox as podctl prints it: every field of the library's type, with "ipv4" and
// "ipv6" always present in each attachment ("" when the network has no subnet of that family), so that
// scripts can rely on the keys of the CLI contract.
type sandboxJSON struct {
	*netmgr.Sandbox
	Attachments []attachmentJSON `json:"attachments"`
}

type attachmentJSON struct {
	netmgr.Attachment
	IPv4 string `json:"ipv4"`
	IPv6 string `json:"ipv6"`
	MAC  string `json:"mac"`
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func toJSON(s *netmgr.Sandbox) sandboxJSON {
	out := sandboxJSON{Sandbox: s, Attachments: make([]attachmentJSON, 0, len(s.Attachments))}
	for _, a := range s.Attachments {
		out.Attachments = append(out.Attachments, attachmentJSON{
			Attachment: a, IPv4: prefixString(a.IPv4), IPv6: prefixString(a.IPv6), MAC: a.MAC,
		})
	}
	return out
}

func printNetworks(g *globals, nets []*netmgr.Network) error {
	if g.output == "json" {
		if nets == nil {
			nets = []*netmgr.Network{}
		}
		return writeJSON(g.stdout, nets)
	}
	tw := newTable(g.stdout)
	fmt.Fprintln(tw, "NAME\tDRIVER\tSUBNETS\tGATEWAYS\tSANDBOXES")
	for _, n := range nets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Driver, list(n.Subnets), list(n.Gateways), list(n.Sandboxes))
	}
	return tw.Flush()
}

func printNetwork(g *globals, n *netmgr.Network) error {
	if g.output == "json" {
		return writeJSON(g.stdout, n)
	}
	tw := newTable(g.stdout)
	fmt.Fprintf(tw, "Name:\t%s\n", n.Name)
	fmt.Fprintf(tw, "ID:\t%s\n", n.ID)
	fmt.Fprintf(tw, "Driver:\t%s\n", n.Driver)
	fmt.Fprintf(tw, "Subnets:\t%s\n", list(n.Subnets))
	fmt.Fprintf(tw, "Gateways:\t%s\n", list(n.Gateways))
	fmt.Fprintf(tw, "Internal:\t%t\n", n.Internal)
	if n.MTU != 0 {
		fmt.Fprintf(tw, "MTU:\t%d\n", n.MTU)
	}
	fmt.Fprintf(tw, "Options:\t%s\n", orDash(kvList(n.Options)))
	fmt.Fprintf(tw, "Created:\t%s\n", n.Created.Format("2006-01-02T15:04:05Z07:00"))
	fmt.Fprintf(tw, "Sandboxes:\t%s\n", list(n.Sandboxes))
	return tw.Flush()
}

func printSandboxes(g *globals, sbs []*netmgr.Sandbox) error {
	if g.output == "json" {
		out := make([]sandboxJSON, 0, len(sbs))
		for _, s := range sbs {
			out = append(out, toJSON(s))
		}
		return writeJSON(g.stdout, out)
	}
	tw := newTable(g.stdout)
	fmt.Fprintln(tw, "NAME\tMODE\tNETNS\tADDRESSES")
	for _, s := range sbs {
		mode := s.Mode
		if s.Join != "" {
			mode += ":" + s.Join
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, mode, s.NetNS, addresses(s))
	}
	return tw.Flush()
}

// addresses lists a sandbox's addresses as NETWORK=ADDR/LEN.
func addresses(s *netmgr.Sandbox) string {
	var out []string
	for _, a := range s.Attachments {
		for _, p := range []netip.Prefix{a.IPv4, a.IPv6} {
			if p.IsValid() {
				out = append(out, a.Network+"="+p.String())
			}
		}
	}
	return list(out)
}

func printSandbox(g *globals, s *netmgr.Sandbox) error {
	if g.output == "json" {
		return writeJSON(g.stdout, toJSON(s))
	}
	tw := newTable(g.stdout)
	fmt.Fprintf(tw, "Name:\t%s\n", s.Name)
	fmt.Fprintf(tw, "ID:\t%s\n", s.ID)
	fmt.Fprintf(tw, "Mode:\t%s\n", s.Mode)
	fmt.Fprintf(tw, "NetNS:\t%s\n", s.NetNS)
	if s.Join != "" {
		fmt.Fprintf(tw, "Join:\t%s\n", s.Join)
	}
	if s.PausePID != 0 {
		fmt.Fprintf(tw, "Pause PID:\t%d\n", s.PausePID)
	}
	fmt.Fprintf(tw, "Labels:\t%s\n", orDash(kvList(s.Labels)))
	fmt.Fprintf(tw, "Created:\t%s\n", s.Created.Format("2006-01-02T15:04:05Z07:00"))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Attachments) == 0 {
		return nil
	}
	fmt.Fprintln(g.stdout)
	tw = newTable(g.stdout)
	fmt.Fprintln(tw, "NETWORK\tINTERFACE\tIPV4\tIPV6\tMAC\tHOST INTERFACE")
	for _, a := range s.Attachments {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Network, a.Interface,
			orDash(prefixString(a.IPv4)), orDash(prefixString(a.IPv6)), orDash(a.MAC), orDash(a.HostInterface))
	}
	return tw.Flush()
}

func kvList(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}

func printReport(g *globals, r *netmgr.Report) error {
	if g.output == "json" {
		return writeJSON(g.stdout, r)
	}
	rows := []struct {
		what  string
		items []string
	}{
		{"networks repaired", r.Networks},
		{"sandboxes repaired", r.Sandboxes},
		{"stale sandboxes removed", r.Stale},
		{"addresses freed", r.Addresses},
		{"namespace pins removed", r.Pins},
		{"host interfaces deleted", r.Links},
		{"networks restored", r.Restored},
		{"endpoints restored", r.Endpoints},
		{"unowned bridges removed", r.Bridges},
		{"unowned bridges kept (they have ports)", r.Unowned},
		{"lock files removed", r.Locks},
		{"errors", r.Errors},
	}
	tw := newTable(g.stdout)
	fmt.Fprintln(tw, "WHAT\tCOUNT\tITEMS")
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", row.what, strconv.Itoa(len(row.items)), list(row.items))
	}
	return tw.Flush()
}
