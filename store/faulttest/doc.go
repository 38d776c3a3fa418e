// Package faulttest holds the fault tests of the whole system on a 3-member etcd
// cluster, all real processes on loopback (no root): three lpmos-etcd members, the
// appliance dialling all three, the control plane, and the agent in host mode
// streaming a 256 MiB image into a file. Each test breaks something mid-stream (the
// leader, quorum, the appliance and the control plane, a member's disk) and asserts
// that the task still completes exactly once with every key consistent on every
// member; recovery times go to the test log and to $LPMOS_TIMINGS_FILE. A snapshot
// restored into a new one-member cluster serves the same tasks. See docs/etcd.md#faults.
//
// It lives under store/ because it talks to etcd itself (membership, leader, a
// member's own view of the keys): only store's packages import etcd.
package faulttest
