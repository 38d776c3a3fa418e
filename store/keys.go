package store

import "strings"

// Every etcd key LPMOS reads or writes is built here, so a layout change is one diff.
// The v2.1 keys (docs/contract.md) are the contract; the /os/index/ keys are our own extras
// that make lookups O(1) and are always written in the same transaction as the data
// they index.
const (
	taskRoot      = "/os/install/task/"
	regionRoot    = "/os/region/"
	unmatchedRoot = "/os/unmatched_reports/"
	indexRoot     = "/os/index/"
)

// TaskPart names one key of a task: /os/install/task/{region}/{task_id}/{part}.
// Watchers outside store compare against these, never against strings.
type TaskPart string

const (
	PartMetadata TaskPart = "metadata"
	PartStatus   TaskPart = "status"
	PartHardware TaskPart = "hardware"
	PartProgress TaskPart = "progress"
	PartApproval TaskPart = "approval"
	PartPlan     TaskPart = "plan" // ours, beside the v2.1 keys
	// PartAgentToken is ours too: the task's agent token, hashed (sha256), with its
	// generation. Under the task's own (per-region) prefix like every task key.
	PartAgentToken TaskPart = "agent_token"
)

// The same names as key fields, for key building in this package.
const (
	fieldMetadata = string(PartMetadata)
	fieldStatus   = string(PartStatus)
	fieldHardware = string(PartHardware)
	fieldProgress = string(PartProgress)
	fieldApproval = string(PartApproval)
	fieldPlan     = string(PartPlan)
	fieldToken    = string(PartAgentToken)
)

func taskDir(region, id string) string        { return taskRoot + region + "/" + id + "/" }
func taskKey(region, id, field string) string { return taskDir(region, id) + field }
func regionTaskPrefix(region string) string   { return taskRoot + region + "/" }
func regionDir(region string) string          { return regionRoot + region + "/" }
func heartbeatKey(region string) string       { return regionDir(region) + "heartbeat" }
func regionStatusKey(region string) string    { return regionDir(region) + "status" }
func regionCloudInitKey(region string) string { return regionDir(region) + "cloud_init" }
func unmatchedPrefix(region string) string    { return unmatchedRoot + region + "/" }
func unmatchedKey(region, id string) string   { return unmatchedPrefix(region) + id }
func leasePrefix(region string) string        { return "/os/dhcp/leases/" + region + "/" }
func leaseKey(region, ip string) string       { return leasePrefix(region) + ip }

// The MAC and status indexes, like every per-region key, put the region right after
// their root: one range per kind reads every region (the control plane), one prefix
// per kind names one region (its etcd role, RegionPrefixes).
func openMACIndexPrefix(region string) string   { return indexRoot + "mac/" + region + "/" }
func openMACIndexKey(region, mac string) string { return openMACIndexPrefix(region) + mac }
func lastMACIndexPrefix(region string) string   { return indexRoot + "mac-last/" + region + "/" }
func lastMACIndexKey(region, mac string) string { return lastMACIndexPrefix(region) + mac }
func unmatchedIndexPrefix(region string) string { return indexRoot + "unmatched/" + region + "/" }
func unmatchedIndexKey(region, mac string) string {
	return unmatchedIndexPrefix(region) + mac
}

// taskRegionIndexKey finds a task's region from its id alone (the control plane's API
// names tasks by id). It is global and control-only: no appliance reads it (an
// appliance always knows its region), so no region's etcd role names it.
func taskRegionIndexKey(id string) string { return indexRoot + "task/" + id }

// healthProbeKey is what Ping reads (count only): a linearizable read proves a quorum
// answers. Nothing is ever stored there; every LPMOS etcd role may read it.
const healthProbeKey = "/os/health-probe"

// RegionPrefixes are the prefixes of region's own keys: every key its appliance reads,
// writes or watches lies under one of them, and each ends in '/' so that dc1's never
// covers dc10's. Its etcd role (EnsureRegionRole) gets read-write on exactly these and
// read on healthProbeKey; the control plane's keys (/os/auth/, the task index
// /os/index/task/, /os/audit/_control/) lie under none.
func RegionPrefixes(region string) []string {
	return []string{
		regionTaskPrefix(region),
		regionDir(region),
		unmatchedPrefix(region),
		leasePrefix(region),
		openMACIndexPrefix(region),
		lastMACIndexPrefix(region),
		unmatchedIndexPrefix(region),
		statusIndexPrefix(region),
		auditPrefix(region),
	}
}

// ControlPrefix covers every LPMOS key: the control plane's etcd role.
const ControlPrefix = "/os/"

// The control plane's identities, under /os/auth/ (no appliance reads them): users,
// API tokens by id (the secret is stored only as its sha256) and web sessions by the
// sha256 of the cookie.
const authRoot = "/os/auth/"

func userPrefix() string                     { return authRoot + "users/" }
func userKey(name string) string             { return userPrefix() + name }
func tokenPrefix() string                    { return authRoot + "tokens/" }
func tokenKey(id string) string              { return tokenPrefix() + id }
func sessionKey(hash string) string          { return authRoot + "sessions/" + hash }
func statusIndexPrefix(region string) string { return indexRoot + "status/" + region + "/" }
func statusIndexKey(region string, st Status, id string) string {
	return statusIndexPrefix(region) + string(st) + "/" + id
}

// splitTaskKey parses /os/install/task/{region}/{id}/{field}.
func splitTaskKey(key string) (region, id, field string, ok bool) {
	rest, found := strings.CutPrefix(key, taskRoot)
	if !found {
		return "", "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}
