package netmgr

// keyNodes holds each node's runtime records in a store that several hosts share:
// nodes/NODE/sandboxes/..., nodes/NODE/ipam/..., nodes/NODE/intents/sandbox/..., nodes/NODE/ports/...
// (store.WithPrefix). The Manager's own per-host runtime file needs no prefix: nothing else writes it.
const keyNodes = "nodes/"
