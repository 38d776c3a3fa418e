package store

import "fmt"

// For the control plane's federation (package federation), which merges the lists of
// several clusters (and of in-memory mirrors) into one: the cursor each list would
// give at a row, so a merged page can resume every list where the merged one stopped.

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
	return newTaskList(region, status).cursor(pagePos{id: id, label: label})
}

// UnmatchedPageCursor is the cursor UnmatchedPage(region, ...) gives at report id of
// reportRegion.
func UnmatchedPageCursor(region, id, reportRegion string) string {
	return newUnmatchedList(region).cursor(pagePos{id: id, label: reportRegion})
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
