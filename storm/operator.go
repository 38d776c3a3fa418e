package storm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"lpmos.dev/lpmos/contract"
)

// The operator's side, through the control plane's REST API with a bearer token, as an
// operator's script would: create the known machines' tasks before the storm, and
// approve each reported task's plan by the digest it read.

// controlCall does one JSON request to the control plane; a non-2xx answer is a
// *contract.StatusError.
func (s *storm) controlCall(ctx context.Context, method, path string, in, out any) error {
	return callCtx(ctx, 15*time.Second, func(ctx context.Context) error {
		var body io.Reader
		if in != nil {
			b, _ := json.Marshal(in)
			body = bytes.NewReader(b)
		}
		req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(s.cfg.ControlURL, "/")+path, body)
		if err != nil {
			return permanent{err}
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+s.cfg.ControlToken)
		resp, err := s.control.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		if err != nil {
			return err
		}
		if resp.StatusCode/100 != 2 {
			se := &contract.StatusError{Code: resp.StatusCode}
			json.Unmarshal(data, &se.Body)
			return se
		}
		if out != nil {
			return json.Unmarshal(data, out)
		}
		return nil
	})
}

// createTasks creates a task for every known machine, Approvers at a time.
func (s *storm) createTasks(ctx context.Context, ms []*machine) error {
	work := make(chan *machine)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range s.cfg.Approvers {
		wg.Go(func() {
			for m := range work {
				var task struct {
					TaskID string `json:"task_id"`
				}
				err := s.try(ctx, "create_task", func(ctx context.Context) error {
					return s.controlCall(ctx, http.MethodPost, "/api/v1/tasks", map[string]string{
						"region_id": s.cfg.Region, "target_mac": m.mac.String(), "os_type": s.cfg.OSType, "os_version": s.cfg.OSVersion}, &task)
				})
				mu.Lock()
				if err != nil && first == nil {
					first = fmt.Errorf("create the task of %s: %w", m.mac, err)
				}
				mu.Unlock()
				m.taskID = task.TaskID
			}
		})
	}
	for _, m := range ms {
		if m.known {
			work <- m
		}
	}
	close(work)
	wg.Wait()
	return first
}

// approveTask reads the task's plan and approves it by its digest. A plan not yet
// approvable (the region's catalog not yet heard) is read again.
func (s *storm) approveTask(ctx context.Context, id string) {
	s.timed("approve_api", func() error {
		return s.try(ctx, "approve_api", func(ctx context.Context) error {
			var task struct {
				Status string         `json:"status"`
				Plan   *contract.Plan `json:"plan"`
			}
			if err := s.controlCall(ctx, http.MethodGet, "/api/v1/tasks/"+id, nil, &task); err != nil {
				return err
			}
			if !task.Plan.Approvable() {
				return &contract.StatusError{Code: 503, Body: contract.Response{Message: fmt.Sprintf("task %s (%s): plan not approvable: %+v", id, task.Status, task.Plan), RetryAfter: 1}}
			}
			return s.controlCall(ctx, http.MethodPost, "/api/v1/tasks/"+id+"/approve", map[string]string{"plan_digest": task.Plan.Digest}, nil)
		})
	})
}
