package store

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// For the control plane's federation (package federation), which merges the lists of
// several clusters (and of in-memory mirrors) into one: the cursor each list would
// give at a row, so a merged page can resume every list where the merged one stopped,
// and the revision a cluster is at, so a mirror's catch-up can be measured.

func taskScope(region string, status Status) string { return "tasks/" + region + "/" + string(status) }
func unmatchedScope(region string) string           { return "unmatched/" + region }
func auditScope(f AuditFilter) string {
	return fmt.Sprintf("audit/%s/%s/%s/%s/%d", f.Region, f.TaskID, f.Actor, f.Action, f.Since.Unix())
}

// TaskPageCursor is the cursor TaskPage(region, status, ...) gives at the row of task
// id, a task of taskRegion: a page with After set to it starts with the next older task.
func TaskPageCursor(region string, status Status, id, taskRegion string) string {
	label := taskRegion
	if region == "" && status == "" {
		label = "" // the task index: one range, unlabelled
	}
	l := pagedList{scope: taskScope(region, status)}
	return l.cursor(pagePos{id: id, label: label})
}

// UnmatchedPageCursor is the cursor UnmatchedPage(region, ...) gives at report id of
// reportRegion.
func UnmatchedPageCursor(region, id, reportRegion string) string {
	l := pagedList{scope: unmatchedScope(region)}
	return l.cursor(pagePos{id: id, label: reportRegion})
}

// AuditPageCursor is the cursor AuditPage(f, ...) gives at entry e.
func AuditPageCursor(f AuditFilter, e AuditEntry) string {
	label := ""
	if f.TaskID == "" {
		// A scan's label is the key between the list's prefix and the id.
		label = e.TaskID
		if label == "" {
			label = noTask
		}
		if f.Region == "" {
			r := e.Region
			if r == "" {
				r = controlScope
			}
			label = r + "/" + label
		}
	}
	l := pagedList{scope: auditScope(f)}
	return l.cursor(pagePos{id: e.ID, label: label})
}

// Revision reads the cluster's current revision (a count-only read of the health
// probe key, as Ping): the control plane's ping of a region cluster, whose answer
// also says how far a mirror has to catch up.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.c.Get(ctx, healthProbeKey, clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}
