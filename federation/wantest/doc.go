// Package wantest holds the WAN-cut tests of issue 16 (docs/federation.md), all real
// processes in network namespaces (root only; skipped otherwise): "hq" runs the shared
// etcd (lpmos-etcd) and the control plane, "dc1" an appliance on that shared etcd, and
// "dc2" an appliance on its own embedded etcd, which the control plane reaches over the
// hq<->dc2 veth (--region dc2=http://...). Machines are host-mode agents streaming a
// rate-limited image from their region's appliance. The tests cut the hq<->dc2 link
// (ip link set down) with installs in flight, check that dc2 keeps provisioning on its
// own (break-glass approval included), that dc1 and the control plane carry on with
// dc2 shown unreachable and stale, and, once the link is back, that the control plane
// shows every change made during the cut, also after dc2's etcd was compacted past
// what the control plane had seen. Catch-up times go to the test log and to
// $LPMOS_TIMINGS_FILE.
//
// Only its tests import etcd (to compact dc2's cluster and read it directly); the
// dependency rule "only store imports etcd" looks at non-test imports.
package wantest
