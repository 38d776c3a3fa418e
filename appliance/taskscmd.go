package appliance

// Break-glass on the appliance host: `lpmos-appliance tasks list|show|approve|cancel`
// reads and decides the region's tasks in the region's etcd directly, for when the
// control plane cannot be reached (a WAN cut, the region on its own etcd). The
// decisions are the store's own (ApproveTask by the plan's digest, CancelTask), the
// same ones the UI and API make, audited the same way but by a local actor
// (store.ActorLocal) with the name and the reason the person gave.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/internal/cliflag"
	"lpmos.dev/lpmos/store"
)

const tasksUsage = `usage: lpmos-appliance tasks COMMAND [ID] [flags]

  list [--status S] [--limit N]                  the region's tasks, newest first
  show ID                                        a task and its install plan, as stored
  approve ID --digest D --as NAME --reason TEXT  approve the plan show printed, by its digest
  cancel ID --as NAME --reason TEXT              cancel an open task

Break-glass, on the appliance host, against the region's etcd: --label (env
REGION_LABEL), --etcd-endpoints (env ETCD_ENDPOINTS; default: the embedded etcd at
--etcd-listen-client-urls) and the --etcd-* credentials, as the appliance takes them.
--as is recorded in the audit trail, not authenticated: what lets you act is shell
access to this host and the region's etcd credentials.
`

// Bounds of what a person types: an audit entry is a line to read, not a document.
const (
	maxAsName = 64
	maxReason = 500
)

// tasksCmd is one invocation of lpmos-appliance tasks.
type tasksCmd struct {
	sub                  string
	id                   string
	label                string
	endpoints            string
	embeddedClientURLs   string
	creds                store.Credentials
	status               string
	limit                int
	digest, name, reason string
}

// Tasks runs `lpmos-appliance tasks ...` (args without "tasks"). Output goes to stdout;
// a refusal is the returned error, and nothing is written then.
func Tasks(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, err := parseTasks(args, getenv, stderr)
	if err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	eps := splitList(c.endpoints)
	if len(eps) == 0 {
		eps = splitList(c.embeddedClientURLs)
	}
	all, err := store.Open(octx, store.DialConfig{Endpoints: eps, Credentials: c.creds})
	if err != nil {
		return err
	}
	defer all.Close()
	// Tasks by id in this region only: the region's etcd role reads no task index.
	st, err := all.InRegion(c.label)
	if err != nil {
		return err
	}
	switch c.sub {
	case "list":
		return c.list(octx, st, stdout)
	case "show":
		return c.show(octx, st, stdout)
	case "approve":
		return c.approve(store.WithActor(octx, c.actor(getenv)), st, stdout)
	default:
		return c.cancel(store.WithActor(octx, c.actor(getenv)), st, stdout)
	}
}

func parseTasks(args []string, getenv func(string) string, stderr io.Writer) (*tasksCmd, error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, tasksUsage)
		if len(args) == 0 {
			return nil, errors.New("tasks: name a command: list, show, approve or cancel")
		}
		return nil, flag.ErrHelp
	}
	c := &tasksCmd{sub: args[0]}
	fs := flag.NewFlagSet("lpmos-appliance tasks "+c.sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, tasksUsage, "\nflags:\n"); fs.PrintDefaults() }
	fs.StringVar(&c.label, "label", "", "the region, e.g. dc1 (env REGION_LABEL; required)")
	fs.StringVar(&c.endpoints, "etcd-endpoints", "", "comma-separated endpoints of the region's etcd (env ETCD_ENDPOINTS; default: --etcd-listen-client-urls)")
	fs.StringVar(&c.embeddedClientURLs, "etcd-listen-client-urls", embeddedClientURLs, "the appliance's embedded etcd client URLs, dialled when --etcd-endpoints is empty")
	c.creds.AddFlags(fs)
	positional := 1
	switch c.sub {
	case "list":
		positional = 0
		fs.StringVar(&c.status, "status", "", "only tasks in this status: "+statusNames())
		fs.IntVar(&c.limit, "limit", 50, fmt.Sprintf("at most this many tasks, the newest (1-%d)", store.MaxPageLimit))
	case "show":
	case "approve":
		fs.StringVar(&c.digest, "digest", "", "the plan digest `tasks show ID` printed: the plan you approve (required)")
		fallthrough
	case "cancel":
		fs.StringVar(&c.name, "as", "", "your name, recorded as the approver in the audit trail (required; not authenticated)")
		fs.StringVar(&c.reason, "reason", "", "why this is decided here and not in the control plane (required; recorded)")
	default:
		fmt.Fprint(stderr, tasksUsage)
		return nil, fmt.Errorf("tasks: unknown command %q (list, show, approve or cancel)", c.sub)
	}
	pos, err := cliflag.ParseInterleaved(fs, args[1:])
	if err != nil {
		return nil, err
	}
	if len(pos) != positional {
		if positional == 0 {
			return nil, fmt.Errorf("tasks %s: unexpected arguments %q", c.sub, pos)
		}
		return nil, fmt.Errorf("tasks %s: name one task id (tasks list shows them), got %q", c.sub, pos)
	}
	if positional == 1 {
		c.id = pos[0]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, env := range envFor {
		if v := getenv(env); v != "" && !set[name] && fs.Lookup(name) != nil {
			if err := fs.Set(name, v); err != nil {
				return nil, fmt.Errorf("%s=%q: %w", env, v, err)
			}
		}
	}
	c.creds.FromEnv(fs, getenv)
	return c, c.validate()
}

// validate refuses before anything is dialled: a refused command writes nothing.
func (c *tasksCmd) validate() error {
	if c.label == "" {
		return errors.New("--label (or REGION_LABEL) is required: the region whose tasks these are")
	}
	if err := store.ValidateRegion(c.label); err != nil {
		return fmt.Errorf("--label: %w", err)
	}
	if c.status != "" && !store.Status(c.status).Valid() {
		return fmt.Errorf("--status: %q is not one of %s", c.status, statusNames())
	}
	if c.sub == "list" && (c.limit < 1 || c.limit > store.MaxPageLimit) {
		return fmt.Errorf("--limit: %d is not within 1-%d", c.limit, store.MaxPageLimit)
	}
	if c.sub != "approve" && c.sub != "cancel" {
		return nil
	}
	c.name, c.reason = strings.TrimSpace(c.name), strings.TrimSpace(c.reason)
	switch {
	case c.sub == "approve" && c.digest == "":
		return fmt.Errorf("--digest is required: approve the plan you read (lpmos-appliance tasks show %s prints its digest)", c.id)
	case c.name == "":
		return errors.New("--as NAME is required: who decides this, for the audit trail")
	case c.reason == "":
		return errors.New("--reason TEXT is required: why this is decided on the appliance host, for the audit trail")
	case contract.HasControl(c.name) || len(c.name) > maxAsName:
		return fmt.Errorf("--as: must be printable and at most %d bytes", maxAsName)
	case contract.HasControl(c.reason) || len(c.reason) > maxReason:
		return fmt.Errorf("--reason: must be one printable line of at most %d bytes", maxReason)
	}
	return nil
}

// actor is who approves or cancels: the name given, marked local, with the host and
// the OS account it ran under (what the host itself vouches for).
func (c *tasksCmd) actor(getenv func(string) string) store.Actor {
	host, _ := os.Hostname()
	uid := os.Getuid()
	account := "uid " + strconv.Itoa(uid)
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		account = u.Username
	}
	if su := getenv("SUDO_USER"); su != "" {
		account += " (sudo from " + su + ")"
	}
	return store.Actor{Kind: store.ActorLocal, Name: c.name, Reason: c.reason,
		Source: "appliance-cli " + account + "@" + host}
}

func statusNames() string {
	names := make([]string, len(store.Statuses))
	for i, s := range store.Statuses {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

func (c *tasksCmd) list(ctx context.Context, st *store.Store, out io.Writer) error {
	total, err := st.CountTasks(ctx, c.label, store.Status(c.status))
	if err != nil {
		return err
	}
	tasks, _, err := st.TaskPage(ctx, c.label, store.Status(c.status), store.Page{Limit: c.limit})
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TASK\tSTATUS\tMAC\tOS\tAGE")
	now := time.Now()
	for _, t := range tasks {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", t.TaskID, t.Status, t.TargetMAC, t.OSRef, age(now.Sub(t.CreatedAt)))
	}
	w.Flush()
	what := "tasks"
	if c.status != "" {
		what = c.status + " tasks"
	}
	fmt.Fprintf(out, "%d of %d %s in %s, newest first\n", len(tasks), total, what, c.label)
	return nil
}

// age is how long ago, in the largest unit that says it.
func age(d time.Duration) string {
	d = max(d, 0)
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + "h"
	}
	return strconv.Itoa(int(d.Hours()/24)) + "d"
}

func (c *tasksCmd) show(ctx context.Context, st *store.Store, out io.Writer) error {
	t, err := st.GetTask(ctx, c.id)
	if err != nil {
		return err
	}
	trail, err := st.ListAudit(ctx, store.AuditFilter{Region: c.label, TaskID: t.TaskID})
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%s\t%s\n", k, v)
		}
	}
	at := func(p *time.Time) string {
		if p == nil {
			return ""
		}
		return p.UTC().Format(time.RFC3339) + " (" + age(time.Since(*p)) + " ago)"
	}
	line("task", t.TaskID)
	line("region", t.RegionID)
	line("mac", t.TargetMAC)
	line("os", t.OSRef.String())
	line("status", string(t.Status))
	line("created", at(&t.CreatedAt))
	line("reported", at(t.ReportedAt))
	line("approved", at(t.ApprovedAt))
	if a := t.Approval; a != nil {
		line("approved by", a.ApprovedBy)
	}
	line("finished", at(t.FinishedAt))
	line("review", t.Review)
	line("error", t.Error)
	if p := t.Progress; p != nil {
		line("progress", fmt.Sprintf("%s %.0f%% %s", p.Stage, p.Percentage, p.Message))
	}
	w.Flush()

	// The plan as stored: the one thing an approval approves, shown whole.
	switch p := t.Plan; {
	case p == nil:
		fmt.Fprintln(out, "\nplan: none yet (the machine has not reported its hardware)")
	default:
		b, _ := json.MarshalIndent(p, "", "  ")
		fmt.Fprintf(out, "\nplan (as stored; an approval approves exactly this, by its digest):\n%s\n", b)
		switch {
		case !p.Approvable():
			fmt.Fprintf(out, "\nThis plan cannot be approved: %s\n", p.Refused)
		case t.Status == store.StatusPendingApproval:
			fmt.Fprintf(out, "\nTo erase %s and install %s:\n  lpmos-appliance tasks approve %s --label %s --digest %s --as NAME --reason TEXT\n",
				p.Disk.Path, p.Image.OSRef, t.TaskID, t.RegionID, p.Digest)
		}
	}
	if len(trail) > 0 {
		fmt.Fprintln(out, "\nhistory:")
		w = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		for i := len(trail) - 1; i >= 0; i-- { // oldest first
			e := trail[i]
			fmt.Fprintf(w, "  %s\t%s\t%s", e.Time.UTC().Format(time.RFC3339), e.Action, e.Actor)
			if r := e.Detail["reason"]; r != "" {
				fmt.Fprint(w, "\t"+r)
			}
			fmt.Fprintln(w)
		}
		w.Flush()
	}
	return nil
}

func (c *tasksCmd) approve(ctx context.Context, st *store.Store, out io.Writer) error {
	t, err := st.ApproveTask(ctx, c.id, c.digest)
	if errors.Is(err, store.ErrPlanChanged) {
		return fmt.Errorf("refused, nothing approved: %w: read it again (lpmos-appliance tasks show %s) and approve the plan it shows", err, c.id)
	}
	if err != nil {
		return fmt.Errorf("refused, nothing approved: %w", err)
	}
	p := t.Plan
	fmt.Fprintf(out, "task %s approved by %s (local, break-glass): %s gets %s.\n"+
		"The agent starts at its next approval poll; the control plane shows this approval as local once it reads this etcd.\n",
		t.TaskID, t.Approval.ApprovedBy, p.Disk.Path, p.Image.OSRef)
	return nil
}

func (c *tasksCmd) cancel(ctx context.Context, st *store.Store, out io.Writer) error {
	t, err := st.CancelTask(ctx, c.id, c.reason)
	if err != nil {
		return fmt.Errorf("refused, nothing cancelled: %w", err)
	}
	fmt.Fprintf(out, "task %s cancelled by %s (local, break-glass): %s\n", t.TaskID, store.ActorFrom(ctx), t.Error)
	return nil
}
