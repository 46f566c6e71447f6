// Package firewall programs the nftables rules netmgr needs to isolate bridge
// networks from each other and to masquerade their traffic, all kept in one
// table, inet netmgr, that is replaced as a whole in a single transaction.
//
// The ruleset for a list of networks is:
//
//	table inet netmgr {
//		set bridges { type ifname; elements = { <every bridge> } }
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname B oifname != B drop                    # Internal only
//			oifname B iifname != B drop                    # Internal only
//			iifname B oifname != B oifname @bridges drop   # isolation
//		}
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			meta nfproto ipv4 ip saddr S oifname != B masquerade  # Masquerade && !Internal
//			meta nfproto ipv6 ip6 saddr S oifname != B masquerade
//		}
//	}
//
// Every rule carries a comment "network=<name>" (a libnftnl comment in the rule
// UserData) so that rules can be traced back to their network, by
// [Firewall.Networks] as well as by a human reading `nft list ruleset`.
//
// # Threading
//
// A [Firewall] is safe for concurrent use; its operations are serialized. No
// operation switches the calling thread's network namespace: each one opens a
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
