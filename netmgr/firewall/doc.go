// Package firewall programs the nftables rules netmgr needs to isolate
// networks from each other and to masquerade their traffic, all kept in one
// table, inet netmgr, that is replaced as a whole in a single transaction.
// Networks are keyed on their host-side interfaces ([Network.Ifaces], which
// the network's driver chooses: a bridge network's bridge); below, B is one
// of a network's interfaces and "!= B" stands for "none of them". A network
// without interfaces gets no rules of this table. An interface name ending in
// "*" is a prefix wildcard, as in nft (a routed network's veths: "nmr1a2b*");
// wildcards stay out of the ifaces set, and every other network's interfaces
// get one more isolation rule per wildcard G: iifname B oifname G drop.
//
// The ruleset for a list of networks is:
//
//	table inet netmgr {
//		set ifaces { type ifname; elements = { <every network's interfaces> } }
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname B oifname != B drop                    # Internal only
//			oifname B iifname != B drop                    # Internal only
//			iifname B oifname != B oifname @ifaces drop    # isolation
//			oifname B iifname != B ct state invalid,untracked drop                 # !Internal && !Routed
//			oifname B iifname != B ct status ! dnat ct state ! established,related drop
//		}
//		chain input {
//			type filter hook input priority filter; policy accept;
//			iifname B icmpv6 type nd-neighbor-solicit accept     # Internal only
//			iifname B icmpv6 type nd-neighbor-advert accept
//			iifname B ct state ! established,related drop        # the host itself
//		}
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			meta nfproto ipv4 ip saddr S oifname != B masquerade  # Masquerade && !Internal
//			meta nfproto ipv6 ip6 saddr S oifname != B masquerade
//		}
//		chain hairpin {
//			type nat hook postrouting priority srcnat; policy accept;
//			ct status dnat ip saddr S oifname B masquerade        # !Internal
//			ct status dnat ip6 saddr S oifname B masquerade
//		}
//	}
//
// The last two forward rules keep connections from elsewhere (a neighbour that routes the subnet via
// the host) out of a bridge unless a published port translated them, as Docker 28 does by default;
// [Network.Routed] lifts that. The input chain keeps internal networks off the host's own addresses.
//
// Where iptables-nft's table ip filter (or ip6 filter) has a FORWARD chain, whose policy DROP would
// override every accept of netmgr's, Apply also keeps one jump there to a chain NETMGR-FORWARD that
// accepts the networks' interfaces' traffic, and removes both with the last network (see foreign.go).
//
// The hairpin chain makes a pod that reaches a published port (or later a service) through a host
// address, and is sent back to a pod on its own bridge, see the answer come from the address it asked.
//
// Published ports live in a second table, inet netmgr_ports, that Apply leaves alone (except that with
// no networks it is removed too). Its rules are fixed; the ports are elements of four maps, so that
// publishing one more port costs the same however many are published ([Firewall.AddPorts],
// [Firewall.RemovePorts]):
//
//	table inet netmgr_ports {
//		map any4  { type inet_proto . inet_service : ipv4_addr . inet_service }              # any host address
//		map addr4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }  # one host address
//		map any6, addr6 ...                                                                  # the same for IPv6
//		chain prerouting { type nat hook prerouting priority dstnat   # from outside and from pods (hairpin)
//			dnat ip to ip daddr . meta l4proto . th dport map @addr4
//			fib daddr type local dnat ip to meta l4proto . th dport map @any4
//			... ip6 ...
//		}
//		chain output { type nat hook output priority -100; the same rules }  # from the host itself
//		chain postrouting { ct status dnat ip saddr 127.0.0.0/8 masquerade }  # from the host's 127.0.0.1
//		chain input { iifname != "lo" ip daddr 127.0.0.0/8 ct state ! established,related drop }
//	}
//
// The last two rules pair with route_localnet=1, which the caller sets on bridges with published
// ports so that the host's 127.0.0.1 can be forwarded to a pod; the input rule keeps that from
// exposing the host's loopback services to the bridges (CVE-2020-8558). IPv6 has no equivalent of
// route_localnet: ::1 is not forwarded.
//
// Every rule carries a comment "network=<name>" (a libnftnl comment in the rule
// UserData) so that rules can be traced back to their network, by
// [Firewall.Networks] as well as by a human reading `nft list ruleset`.
//
// # Threading
//
// A [Firewall] is safe for concurrent use; its operations are serialized. No
// operation switches the calling thread's network namespace (Apply reads
// iptables-legacy's procfs files on a thread of its own): each one opens a
// netlink socket bound to the target namespace (the socket is created on a
// short-lived, locked thread by the netlink library) and closes it before
// returning. The context's deadline and cancellation interrupt the netlink
// exchange; an interrupted [Firewall.Apply] may or may not have been committed
// by the kernel, but since Apply is idempotent the caller can simply retry.
//
// # Privileges
//
// Every operation that talks to the kernel needs CAP_NET_ADMIN in the user
// namespace owning the target network namespace; binding the socket to a
// namespace other than the caller's also needs CAP_SYS_ADMIN. [New] needs no
// privileges.
package firewall
