// Package dns is netmgr's embedded DNS server: for every network of this node that has DNS on (the
// default; `--opt dns=false` turns it off) it listens on the network's gateway addresses, port 53,
// UDP and TCP, in the host namespace, and answers the network's own clients:
//
//   - the names and aliases of the sandboxes attached to that network, also as NAME.DOMAIN, where a
//     pod's search path finds them (A, AAAA, and PTR for their addresses); a sandbox on another network is not visible, and a client whose source address is
//     not on the network the listener serves is refused;
//   - service names from a ServiceSource (NAME, NAME.svc, NAME.svc.DOMAIN, and with a namespace
//     NAME.NS, NAME.NS.svc, NAME.NS.svc.DOMAIN; DOMAIN defaults to cluster.local), and PTR for their
//     cluster IPs;
//   - everything else is forwarded to the upstream resolvers (the host namespace's resolv.conf, re-read
//     when it changes, or Config.Upstreams), each try bounded by a short timeout inside one overall
//     budget, over TCP when a UDP answer comes back truncated; an upstream that failed is tried last
//     for a while, and when every upstream fails the client gets SERVFAIL within the budget (1.5 s by
//     default) instead of waiting for its own timeout.
//
// In a cluster (the agent on an etcd store) the Controller answers, on a network that spans nodes, for
// the sandboxes of every node on it (ClusterHosts): each node publishes its own under KeyHosts with
// its node's lease and follows everyone's, so a dead node's names go with its lease.
//
// Names inside the cluster domain that nothing answers get an authoritative NXDOMAIN at once, so that
// Kubernetes-style search paths (ndots:5) do not send every external name to the upstreams several
// times. Local answers carry a short TTL (5 s by default) and are rebuilt from the Manager's records
// as soon as a change is seen (Config.Poll, 200 ms by default), so a removed sandbox stops resolving
// at once.
package dns
