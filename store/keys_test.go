package store

import (
	"strings"
	"testing"
)

// Every key a region's appliance touches lies under exactly one of its prefixes and
// under none of another region's, even one whose name extends it (dc1, dc10); the
// control plane's own keys lie under no region's.
func TestRegionPrefixesCoverTheRegionsKeysOnly(t *testing.T) {
	const id, mac = "0190c0de-0000-7000-8000-000000000001", "52:54:00:00:00:01"
	regionKeys := func(r string) []string {
		return []string{
			taskKey(r, id, fieldMetadata), taskKey(r, id, fieldToken), heartbeatKey(r), regionStatusKey(r),
			unmatchedKey(r, "20260101000000-"+mac), leaseKey(r, "10.0.0.9"),
			openMACIndexKey(r, mac), lastMACIndexKey(r, mac), unmatchedIndexKey(r, mac),
			statusIndexKey(r, StatusPending, id), auditKey(r, id, "e1"), auditKey(r, "", "e2"),
		}
	}
	control := []string{taskRegionIndexKey(id), userKey("alice"), tokenKey("t1"), sessionKey("ab"), auditKey("", "", "e3")}
	under := func(k string, prefixes []string) int {
		n := 0
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				n++
			}
		}
		return n
	}
	for _, pair := range [][2]string{{"dc1", "dc10"}, {"dc10", "dc1"}, {"dc1", "dc2"}} {
		own, other := RegionPrefixes(pair[0]), RegionPrefixes(pair[1])
		for _, k := range regionKeys(pair[0]) {
			if n := under(k, own); n != 1 {
				t.Errorf("%s: under %d of %s's prefixes, want 1", k, n, pair[0])
			}
			if under(k, other) != 0 {
				t.Errorf("%s: under a prefix of %s", k, pair[1])
			}
		}
		for _, k := range control {
			if under(k, own) != 0 {
				t.Errorf("control key %s is under a prefix of %s", k, pair[0])
			}
		}
	}
	for _, p := range RegionPrefixes("dc1") {
		if !strings.HasSuffix(p, "/") || !strings.HasPrefix(p, ControlPrefix) {
			t.Errorf("prefix %q must end in '/' and lie under %s", p, ControlPrefix)
		}
	}
}
