package store

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Agent token audit actions.
const (
	AuditAgentTokenIssue  = "agent_token.issue" // issued by a report that wrote nothing else
	AuditAgentTokenReset  = "agent_token.reset"
	AuditAgentTokenReject = "agent_token.reject" // written by the appliance (Audit)
)

// AgentToken is a task's agent token record, the value of
// /os/install/task/{region}/{id}/agent_token: the token's sha256 (never the token),
// its generation and when it was issued. A reset bumps the generation and forgets the
// hash; the next matched report issues that generation's token. Outside store only
// Generation and IssuedAt are visible: the hash is checked with Matches.
type AgentToken struct {
	Generation int64      `json:"generation"`
	IssuedAt   *time.Time `json:"issued_at,omitempty"` // nil: reset, not issued yet
	ResetAt    *time.Time `json:"reset_at,omitempty"`
	sha256     string
}

// agentTokenRecord is AgentToken as stored, hash included.
type agentTokenRecord struct {
	SHA256     string     `json:"sha256,omitempty"`
	Generation int64      `json:"generation"`
	IssuedAt   *time.Time `json:"issued_at,omitempty"`
	ResetAt    *time.Time `json:"reset_at,omitempty"`
}

func (t *AgentToken) stored() string {
	b, _ := json.Marshal(agentTokenRecord{SHA256: t.sha256, Generation: t.Generation, IssuedAt: t.IssuedAt, ResetAt: t.ResetAt})
	return string(b)
}

func (t *AgentToken) load(v []byte) error {
	var r agentTokenRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return err
	}
	*t = AgentToken{Generation: r.Generation, IssuedAt: r.IssuedAt, ResetAt: r.ResetAt, sha256: r.SHA256}
	return nil
}

// Issued reports whether the current generation's token was handed out.
func (t *AgentToken) Issued() bool { return t != nil && t.sha256 != "" }

// Matches reports, in constant time, whether token is the issued token of this
// record's generation. A record that was reset and not issued again matches nothing.
func (t *AgentToken) Matches(token string) bool {
	if !t.Issued() || token == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(hashToken(token)), []byte(t.sha256)) == 1
}

func hashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// TokenMinter derives the agent token of a task's generation. The appliance's is an
// HMAC under its region key, so it can hand the same token out again on the boot path
// while etcd holds only the hash.
type TokenMinter func(taskID string, generation int64) string

// issueToken is the record of the token minted for t when t has none issued, with the
// token itself; ("", nil) when t holds an issued token already (a second report gets
// none) or mint is nil.
func issueToken(t *Task, mint TokenMinter, now time.Time) (string, *AgentToken) {
	if mint == nil || t.AgentToken.Issued() {
		return "", nil
	}
	gen := int64(1)
	if t.AgentToken != nil && t.AgentToken.Generation > 0 {
		gen = t.AgentToken.Generation
	}
	tok := mint(t.TaskID, gen)
	rec := &AgentToken{Generation: gen, IssuedAt: &now, sha256: hashToken(tok)}
	if t.AgentToken != nil {
		rec.ResetAt = t.AgentToken.ResetAt
	}
	return tok, rec
}

// ResetAgentToken invalidates the task's agent token: the generation goes up by one
// and the hash is forgotten, so every token of the task is refused from now on. The
// next matched report of the task issues the new generation's token (and the boot
// script carries it from then on, while the task is approved or installing). A task
// that ended has no token to reset (ErrConflict). Audited with ctx's actor.
func (s *Store) ResetAgentToken(ctx context.Context, id string) (Task, error) {
	region, err := s.regionOf(ctx, id)
	if err != nil {
		return Task{}, err
	}
	return s.update(ctx, region, id, func(t *Task) (change, error) {
		if t.Status.Final() {
			return change{}, fmt.Errorf("%w: task %s is %s: its agent token ended with it", ErrConflict, t.TaskID, t.Status)
		}
		var from int64
		if t.AgentToken != nil {
			from = t.AgentToken.Generation
		}
		now := s.now()
		rec := &AgentToken{Generation: from + 1, ResetAt: &now}
		return change{to: t.Status, keepStatus: true, agentToken: rec, action: AuditAgentTokenReset,
			detail: map[string]string{"from_generation": strconv.FormatInt(from, 10), "generation": strconv.FormatInt(rec.Generation, 10)}}, nil
	})
}
