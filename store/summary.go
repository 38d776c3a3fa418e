package store

import (
	"context"
	"fmt"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// summaryBatch is how many tasks one read transaction fetches: two range ops each,
// under etcd's default limit of 128 operations per transaction.
const summaryBatch = 50

// ListTaskSummaries returns the tasks of a region ("" for every region) in one
// status, oldest first, without their hardware reports (Hardware is nil): what a
// task list shows. It finds them through the status index (keys only), so it costs
// nothing per task in another status, then reads those tasks, all at the index
// read's revision (one consistent view).
func (s *Store) ListTaskSummaries(ctx context.Context, region string, status Status) ([]Task, error) {
	if !status.Valid() {
		return nil, invalid("status", "unknown status %q", status)
	}
	prefix := indexRoot + "status/"
	if region != "" {
		if err := ValidateRegion(region); err != nil {
			return nil, err
		}
		prefix = statusIndexPrefix(region) + string(status) + "/"
	}
	idx, err := s.c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list tasks in %s: %w", status, err)
	}
	type ref struct{ region, id string }
	var refs []ref
	for _, kv := range idx.Kvs {
		// /os/index/status/{region}/{status}/{id}
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), indexRoot+"status/"), "/")
		if len(parts) == 3 && parts[1] == string(status) {
			refs = append(refs, ref{parts[0], parts[2]})
		}
	}
	rev := idx.Header.Revision
	var out []Task
	for len(refs) > 0 {
		batch := refs[:min(len(refs), summaryBatch)]
		refs = refs[len(batch):]
		ops := make([]clientv3.Op, 0, 2*len(batch))
		for _, r := range batch {
			// Every key of the task but its hardware report: [dir, hardware) and
			// (hardware, end of dir).
			dir, hw := taskDir(r.region, r.id), taskKey(r.region, r.id, fieldHardware)
			ops = append(ops,
				clientv3.OpGet(dir, clientv3.WithRange(hw), clientv3.WithRev(rev)),
				clientv3.OpGet(hw+"\x00", clientv3.WithRange(clientv3.GetPrefixRangeEnd(dir)), clientv3.WithRev(rev)))
		}
		resp, err := s.c.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("list tasks in %s: %w", status, err)
		}
		for i, r := range batch {
			snap := &taskSnap{}
			for _, rr := range resp.Responses[2*i : 2*i+2] {
				for _, kv := range rr.GetResponseRange().Kvs {
					_, _, field, ok := splitTaskKey(string(kv.Key))
					if !ok {
						continue
					}
					if err := snap.apply(field, kv.Value, kv.ModRevision); err != nil {
						return nil, fmt.Errorf("task %s/%s: %w", r.region, r.id, err)
					}
				}
			}
			// The index is written in the task's own transactions, so at one revision
			// they agree; never crash on foreign keys all the same.
			if snap.task.TaskID != "" && snap.task.Status == status {
				out = append(out, snap.task)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}
