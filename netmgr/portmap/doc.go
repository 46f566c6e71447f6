// Package portmap is the model and the plan of published ports: what a mapping is (Mapping: Docker's
// -p, a Kubernetes hostPort) and its syntax (Parse), the rules that decide whether two mappings
// conflict, the store keys that hold them, the compares and puts that take them in the transaction
// that records a sandbox (Plan), the writes that free them (ReleaseOps), and the decisions of their
// repair (HeldKeys, Orphans, EmptyGuards, Compare, Still): which keys no sandbox holds and which
// firewall elements are stale or missing. It touches neither the kernel nor the store beyond listing
// keys: the Manager chooses the target attachment, checks host addresses, commits what is planned,
// programs the firewall and carries out the repair.
//
// Keys, in the store a Manager's runtime records live in:
//
//	ports/PROTO/PPPPP        -> ""            a guard that every taker of port PPPPP rewrites
//	ports/PROTO/PPPPP/HOST   -> sandbox name  HOST is "*" (any address), 0.0.0.0, :: or an address
//
// Ports are zero-padded to five digits so that listing "ports/tcp/08080" returns that port's guard
// and holders and nothing else. A specific address and a wildcard of its family conflict, and they
// have different keys, so the compare on the guard's revision is what orders concurrent takers.
package portmap
