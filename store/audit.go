package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Actor is who does something: a person (a user of the control plane), an agent (the
// one of a task, or an unauthenticated reporter on the boot network) or the system
// itself (the appliance's deploy timeout, replanning). It travels in the request's
// context (WithActor), set by the layer that authenticated the request, so no store
// caller can write an identity of its choosing into an approval or the audit trail.
type Actor struct {
	Kind   ActorKind `json:"kind"`
	Name   string    `json:"name"`             // user name, task id, or component
	Source string    `json:"source,omitempty"` // remote address, when over the network
	// Reason is why the actor says it acts, when it must say (a break-glass action on
	// the appliance host): every audit entry it writes carries it as detail "reason".
	Reason string `json:"reason,omitempty"`
}

// ActorKind says what sort of actor an Actor is.
type ActorKind string

const (
	ActorUser   ActorKind = "user"
	ActorAgent  ActorKind = "agent"
	ActorSystem ActorKind = "system"
	// ActorLocal is a person at the appliance host acting on the region's etcd
	// directly (lpmos-appliance tasks: break-glass while the control plane is out of
	// reach). The name is the one they gave (--as), recorded, not authenticated: what
	// let them act is shell access to the host and the region's etcd credentials.
	ActorLocal ActorKind = "local"
)

// String is the actor as the audit trail and the timeline name it: "alice",
// "agent:<task>", "system:<component>".
func (a Actor) String() string {
	switch {
	case a.Kind == ActorUser:
		return a.Name
	case a.Name == "":
		return string(a.Kind)
	}
	return string(a.Kind) + ":" + a.Name
}

type actorKey struct{}

// WithActor returns ctx carrying who is acting.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom is the actor in ctx; without one, the system.
func ActorFrom(ctx context.Context) Actor {
	if a, ok := ctx.Value(actorKey{}).(Actor); ok {
		return a
	}
	return Actor{Kind: ActorSystem}
}

// AuditEntry is one line of the audit trail at /os/audit/{region}/{task_id}/{id} (a
// task's events: its page reads one prefix), /os/audit/{region}/_/{id} (a region's other
// events) or /os/audit/_control/_/{id} (logins, users, tokens): who did what to what,
// when and from where. The region comes first so a region's etcd role can name its
// entries. Ids sort by time. Entries are written in the same etcd transaction as the
// change they record and are never edited or deleted by LPMOS.
type AuditEntry struct {
	ID     string            `json:"id"`
	Time   time.Time         `json:"time"`
	Actor  string            `json:"actor"` // Actor.String()
	Kind   ActorKind         `json:"actor_kind"`
	Source string            `json:"source,omitempty"`
	Action string            `json:"action"` // task.create, task.approve, login.failure, ...
	Region string            `json:"region,omitempty"`
	TaskID string            `json:"task_id,omitempty"`
	Target string            `json:"target,omitempty"` // what else the action was on: a user, a token id, a MAC
	Detail map[string]string `json:"detail,omitempty"` // plan digest, disk serial/WWN, image sha256, reasons
}

// Audit actions.
const (
	AuditTaskCreate    = "task.create"
	AuditTaskReport    = "task.report" // hardware (and a new plan) stored on a task
	AuditTaskMatch     = "task.match"
	AuditTaskApprove   = "task.approve"
	AuditTaskReview    = "task.review" // back to pending_approval after an approval
	AuditTaskReplan    = "task.replan"
	AuditTaskStart     = "task.start"
	AuditTaskComplete  = "task.complete"
	AuditTaskFail      = "task.fail"
	AuditTaskCancel    = "task.cancel"
	AuditTaskTimeout   = "task.timeout"
	AuditTaskAbortNote = "task.abort_recorded"
)

// controlScope holds audit entries of no region (logins, users, tokens), and noTask
// those of no task. Region labels and task ids cannot contain "_", so neither collides.
const (
	controlScope = "_control"
	noTask       = "_"
)

func auditPrefix(scope string) string { return "/os/audit/" + scope + "/" }

func auditKey(region, taskID, id string) string {
	if region == "" {
		region = controlScope
	}
	if taskID == "" {
		taskID = noTask
	}
	return auditPrefix(region) + taskID + "/" + id
}

// auditID is an entry's id: its time, so ids sort by time, and rnd.
func auditID(t time.Time, rnd string) string {
	return t.UTC().Format("20060102T150405.000000000Z") + "-" + rnd
}

// newAudit fills an entry for ctx's actor at now. The id sorts by time.
func newAudit(ctx context.Context, now time.Time, action, region, taskID string) *AuditEntry {
	a := ActorFrom(ctx)
	var rnd [4]byte
	rand.Read(rnd[:])
	return &AuditEntry{
		ID: auditID(now, hex.EncodeToString(rnd[:])), Time: now,
		Actor: a.String(), Kind: a.Kind, Source: a.Source, Action: action, Region: region, TaskID: taskID,
		Detail: a.reasonDetail(),
	}
}

// reasonDetail starts an entry's details with the actor's reason, if it gave one.
func (a Actor) reasonDetail() map[string]string {
	if a.Reason == "" {
		return nil
	}
	return map[string]string{"reason": a.Reason}
}

func (e *AuditEntry) with(k, v string) *AuditEntry {
	if v == "" {
		return e
	}
	if e.Detail == nil {
		e.Detail = map[string]string{}
	}
	e.Detail[k] = v
	return e
}

// op is the etcd write of e, for the transaction of the change it records.
func (e *AuditEntry) op() clientv3.Op {
	b, _ := json.Marshal(e)
	return clientv3.OpPut(auditKey(e.Region, e.TaskID, e.ID), string(b))
}

// Audit appends an entry that goes with no other change (a login, a refused agent
// token): action by ctx's actor, about region (may be "") and target.
func (s *Store) Audit(ctx context.Context, action, region, target string, detail map[string]string) error {
	e := newAudit(ctx, s.now(), action, region, "")
	e.Target, e.Detail = target, detail
	if _, err := s.c.Txn(ctx).Then(e.op()).Commit(); err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	return nil
}

// AuditFilter selects audit entries; empty fields match everything.
type AuditFilter struct {
	Region, TaskID, Actor, Action string
	Since                         time.Time
	Limit                         int // newest first; default and maximum 1000
}

// ListAudit returns the newest f.Limit entries matching f, newest first.
func (s *Store) ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	if f.Limit <= 0 || f.Limit > 1000 {
		f.Limit = 1000
	}
	out, _, err := s.AuditPage(ctx, f, Page{Limit: f.Limit})
	return out, err
}

// AuditPage returns one page of the entries matching f (f.Limit is not used), newest
// first. A task's entries are one range read from the cursor with a limit (its region
// is found through the task index when f.Region is empty). A region's entries are
// grouped by task, not by time, so the region (or everything) is read keys only and
// ordered here, and only the page's entries are read whole; a user or action filter
// needs the entries' values, so it reads the region whole (as the trail was read
// before it had pages).
func (s *Store) AuditPage(ctx context.Context, f AuditFilter, p Page) ([]AuditEntry, PageMarks, error) {
	prefix := "/os/audit/"
	if f.Region != "" {
		if err := ValidateRegion(f.Region); err != nil {
			return nil, PageMarks{}, err
		}
		prefix = auditPrefix(f.Region)
	}
	l := &pagedList{scope: auditScope(f),
		validID: func(id string) bool { return len(id) <= 64 }, scan: true}
	if f.TaskID != "" {
		region := f.Region
		if region == "" {
			r, err := s.regionOf(ctx, f.TaskID)
			if errors.Is(err, ErrNotFound) {
				return []AuditEntry{}, PageMarks{}, nil
			}
			if err != nil {
				return nil, PageMarks{}, err
			}
			region = r
		}
		prefix, l.scan = auditPrefix(region)+f.TaskID+"/", false // ids in time order
	}
	l.ranges = []pageRange{{prefix: prefix}}
	if !f.Since.IsZero() {
		from := auditID(f.Since, "")
		l.keepID = func(id string) bool { return id >= from }
	}
	if f.Actor != "" || f.Action != "" {
		l.scan, l.keep = true, func(v []byte) bool {
			var e AuditEntry
			return json.Unmarshal(v, &e) == nil && (f.Actor == "" || e.Actor == f.Actor) &&
				(f.Action == "" || e.Action == f.Action || strings.HasPrefix(e.Action, f.Action+"."))
		}
	}
	rows, marks, rev, err := s.readPage(ctx, l, p)
	if err != nil {
		return nil, PageMarks{}, err // a bad cursor says so as it is
	}
	var values map[string][]byte
	if l.keep == nil {
		keys := make([]string, len(rows))
		for i, r := range rows {
			keys[i] = r.key
		}
		if values, err = s.readValues(ctx, keys, rev); err != nil {
			return nil, PageMarks{}, fmt.Errorf("list audit: %w", err)
		}
	}
	out := []AuditEntry{}
	for _, r := range rows {
		v := r.value
		if l.keep == nil {
			v = values[r.key]
		}
		var e AuditEntry
		if json.Unmarshal(v, &e) != nil || (f.TaskID != "" && e.TaskID != f.TaskID) {
			continue
		}
		out = append(out, e)
	}
	return out, marks, nil
}
