package control

import (
	"net/http"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// resetAgentToken is POST /api/v1/tasks/{id}/reset-agent-token (operator role): the
// task's agent token is invalidated at once (its generation goes up) and the next
// matched report of the task issues the new one. The answer is the task, whose
// agent_token shows the new generation, not yet issued. Audited with the request's
// actor (store.ActorFrom). A task that ended: 409.
func (s *Server) resetAgentToken(w http.ResponseWriter, r *http.Request) error {
	t, err := s.fleet.ResetAgentToken(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	s.log.Info("agent token reset", "task", t.TaskID, "region", t.RegionID, "generation", t.AgentToken.Generation, "by", store.ActorFrom(r.Context()).String())
	httpjson.Write(w, http.StatusOK, masked(t))
	return nil
}
