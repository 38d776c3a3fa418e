package store

import "slices"

// Status is the value of /os/install/task/{region}/{id}/status (a plain string in etcd).
type Status string

const (
	StatusPending         Status = "pending"
	StatusPendingApproval Status = "pending_approval"
	StatusApproved        Status = "approved"
	StatusInstalling      Status = "installing"
	StatusCompleted       Status = "completed"
	StatusFailed          Status = "failed"
	StatusCancelled       Status = "cancelled"
)

// Statuses lists every status in lifecycle order (for counters and filters).
var Statuses = []Status{StatusPending, StatusPendingApproval, StatusApproved, StatusInstalling, StatusCompleted, StatusFailed, StatusCancelled}

// transitions is the task state machine, in one place. A self-transition is listed where it is a legal
// update (a re-report or a new plan while waiting for approval; progress while
// installing). Only an install in progress can complete: approved -> completed would
// be an install nobody saw start. approved and installing go back to pending_approval
// when a report shows the approval no longer holds (the hardware changed, the machine
// restarted mid-install): a second write needs a second approval.
var transitions = map[Status][]Status{
	StatusPending:         {StatusPendingApproval, StatusCancelled},
	StatusPendingApproval: {StatusPendingApproval, StatusApproved, StatusFailed, StatusCancelled},
	StatusApproved:        {StatusInstalling, StatusPendingApproval, StatusFailed, StatusCancelled},
	StatusInstalling:      {StatusInstalling, StatusCompleted, StatusPendingApproval, StatusFailed, StatusCancelled},
}

// CanTransition reports whether from -> to is legal.
func CanTransition(from, to Status) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Final reports whether no transition leaves s (completed, failed, cancelled).
func (s Status) Final() bool { _, ok := transitions[s]; return !ok && s.Valid() }

// Open is the opposite of Final: the task still holds its MAC.
func (s Status) Open() bool { _, ok := transitions[s]; return ok }

// Approved reports whether a person's approval stands: the agent may install (approved)
// or is installing. The regional API, the boot path and the pages all ask this.
func (s Status) Approved() bool { return s == StatusApproved || s == StatusInstalling }

// Valid reports whether s is a known status.
func (s Status) Valid() bool { return slices.Contains(Statuses, s) }
