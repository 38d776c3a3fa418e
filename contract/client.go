package contract

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client talks to one appliance's regional API.
type Client struct {
	BaseURL string // e.g. http://10.0.0.1:8081
	HTTP    *http.Client
	// Token is the task's agent token, sent as "Authorization: Bearer <Token>" on
	// every request while set (the agent sets it after its report).
	Token string
}

// StatusError is a non-2xx answer, with the API's JSON body when it had one.
type StatusError struct {
	Code int
	Body Response
}

func (e *StatusError) Error() string {
	if e.Body.Message != "" {
		return fmt.Sprintf("HTTP %d: %s", e.Code, e.Body.Message)
	}
	return fmt.Sprintf("HTTP %d", e.Code)
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Code: resp.StatusCode}
		_ = json.Unmarshal(data, &se.Body)
		return se
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return nil
}

// Report posts a hardware report. A 404 (no task yet) comes back as *StatusError with
// Body.RetryAfter set.
func (c *Client) Report(ctx context.Context, r ReportRequest) (Response, error) {
	var out Response
	err := c.do(ctx, http.MethodPost, "/api/report", r, &out)
	return out, err
}

// Approval asks whether mac's task is approved. With wait > 0 the appliance holds the
// answer until the task is approved (or cancelled) or wait (whole seconds, at most 60)
// is over.
func (c *Client) Approval(ctx context.Context, mac string, wait time.Duration) (ApprovalResponse, error) {
	return c.ApprovalWhile(ctx, mac, wait, "")
}

// ApprovalWhile is Approval held while the task's status is status (the agent watching
// its install for a cancel); "" holds until approval.
func (c *Client) ApprovalWhile(ctx context.Context, mac string, wait time.Duration, status string) (ApprovalResponse, error) {
	var out ApprovalResponse
	q := url.Values{}
	if s := int(wait / time.Second); s > 0 {
		q.Set("wait", strconv.Itoa(s))
	}
	if status != "" {
		q.Set("status", status)
	}
	path := "/api/approval/" + url.PathEscape(mac)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// Progress posts install progress.
func (c *Client) Progress(ctx context.Context, p ProgressRequest) error {
	return c.do(ctx, http.MethodPost, "/api/progress", p, nil)
}

// Health reads /api/health.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var out Health
	err := c.do(ctx, http.MethodGet, "/api/health", nil, &out)
	return out, err
}
