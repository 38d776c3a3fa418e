package appliance

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// Agent tokens (project issue 11; Ironic's agent token is the model): one secret per
// task, issued by the first matched report, required on every agent call after it.
//
//	token = hex(HMAC-SHA256(region key, task id + ":" + generation))
//
// etcd keeps only its sha256 (store.AgentToken); the region key lives in a file on the
// appliance (--agent-token-key), so the appliance can hand the same token again on the
// boot path (lpmos.token= in the iPXE script, while the task is approved or
// installing) to an agent that restarted and lost it.

// agentTokenKeySize is the region key's length in bytes.
const agentTokenKeySize = 32

// agentTokenKeyPath is --agent-token-key, or its default: <label>.agent-token.key
// beside the embedded etcd's data dir, or beside --images-dir with an external etcd.
func (c Config) agentTokenKeyPath() string {
	if c.AgentTokenKey != "" {
		return c.AgentTokenKey
	}
	beside := c.EtcdDataDir
	if len(c.EtcdEndpoints) > 0 || beside == "" {
		beside = c.ImagesDir
	}
	return filepath.Join(filepath.Dir(filepath.Clean(beside)), c.Label+".agent-token.key")
}

// loadAgentTokenKey reads the region key from path, creating it (32 random bytes, hex,
// mode 0600) on first start. Appliances of one region must share the file.
func loadAgentTokenKey(path string) ([]byte, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	key := make([]byte, agentTokenKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		_, werr := f.WriteString(hex.EncodeToString(key) + "\n")
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(path)
			return nil, werr
		}
		return key, nil
	case !errors.Is(err, fs.ErrExist):
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err = hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != agentTokenKeySize {
		return nil, fmt.Errorf("%s: want %d bytes in hex (%d hex digits)", path, agentTokenKeySize, 2*agentTokenKeySize)
	}
	return key, nil
}

// mintToken derives the agent token of a task's generation (store.TokenMinter).
func (a *Appliance) mintToken(taskID string, generation int64) string {
	m := hmac.New(sha256.New, a.tokenKey)
	m.Write([]byte(taskID + ":" + strconv.FormatInt(generation, 10)))
	return hex.EncodeToString(m.Sum(nil))
}

// bootToken is the token the boot script carries for t: only while t is approved or
// installing and its token is issued, and only if this appliance's key derives the
// issued token (a replaced key file would hand out a token that is refused).
func (a *Appliance) bootToken(t store.Task) string {
	if !t.Status.Approved() || !t.AgentToken.Issued() {
		return ""
	}
	tok := a.mintToken(t.TaskID, t.AgentToken.Generation)
	if !t.AgentToken.Matches(tok) {
		a.log.Warn("boot script without agent token: the region key (--agent-token-key) does not derive the issued token; reset the task's agent token", "task", t.TaskID)
		return ""
	}
	return tok
}

// bearer is the request's "Authorization: Bearer <token>", or "".
func bearer(r *http.Request) string {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// errBadToken is a refused agent token; the handlers turn it into reject.
type errBadToken struct{ reason string }

func (e *errBadToken) Error() string { return "bad agent token: " + e.reason }

// authorize checks tok against t's issued token in constant time.
func authorize(t *store.Task, tok string) error {
	switch {
	case tok == "":
		return &errBadToken{"no token"}
	case !t.AgentToken.Issued():
		return &errBadToken{"the task has no issued token (reset, or never reported)"}
	case !t.AgentToken.Matches(tok):
		return &errBadToken{"token does not match the task's"}
	}
	return nil
}

// reject logs and audits a refused agent call and returns the 401 for it. Audit
// entries are rate limited (anyone on the boot network can send bad tokens); the log
// line is always written.
func (a *Appliance) reject(w http.ResponseWriter, r *http.Request, taskID, mac, reason string) error {
	w.Header().Set("WWW-Authenticate", `Bearer realm="lpmos-agent"`)
	a.metrics.tokenRejects.Inc()
	a.log.Warn(fmt.Sprintf("rejected %s %s from %s: bad agent token", r.Method, r.URL.Path, r.RemoteAddr), "task", taskID, "mac", mac, "reason", reason)
	if a.rejectAudit.Allow(time.Now()) {
		name := taskID
		if name == "" {
			name = mac
		}
		detail := map[string]string{"method": r.Method, "path": r.URL.Path, "reason": reason, "mac": mac}
		if taskID != "" {
			detail["task_id"] = taskID
		}
		if err := a.store.Audit(asAgent(r, name), store.AuditAgentTokenReject, a.cfg.Label, name, detail); err != nil {
			a.log.Warn("could not audit a rejected agent token", "err", err)
		}
	} else {
		a.log.Debug("rejected agent token not audited: rate limit")
	}
	return &httpjson.Error{Code: http.StatusUnauthorized, Message: "agent token missing or invalid for this task"}
}
