package control

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/internal/cliflag"
	"lpmos.dev/lpmos/store"
)

// The regions command (docs/etcd.md, "Regions and RBAC"; docs/federation.md):
// etcd roles of regions, run by an etcd administrator (root, or anyone while etcd's
// auth is still off), and where each region's etcd is.
//
//	lpmos-control regions add NAME [--password-file F]     etcd user and role region-NAME
//	lpmos-control regions add NAME --etcd URL[,URL] ...    register NAME's own etcd
//	lpmos-control regions remove NAME [--force]            remove that registration
//	lpmos-control regions list | show NAME                 layouts (and the role)
//	lpmos-control regions enable-auth [--root-password-file F] [--control-password-file F]
//	lpmos-control regions migrate copy|verify|register|finish|abort NAME   shared -> own etcd
const regionsUsage = `usage:
  lpmos-control regions add NAME [--password-file F]
      etcd user and role region-NAME: read-write on exactly NAME's keys (idempotent;
      without --password-file the user has no password: client certificate CN region-NAME)
  lpmos-control regions add NAME --etcd URL[,URL] [REGION ETCD FLAGS] [--role [--password-file F]]
      register NAME's own etcd cluster (it must answer first): the control plane reads and
      writes region NAME there; --role also creates etcd user and role region-NAME in it
  lpmos-control regions remove NAME [--force]
      remove that registration (refused while the region has open tasks there, or a
      migration is in progress, unless --force)
  lpmos-control regions list
  lpmos-control regions show NAME
      where each region's keys live (shared: the control plane's etcd; own: its cluster),
      and for show, the role region-NAME's permissions in the control plane's etcd
  lpmos-control regions enable-auth [--root-password-file F] [--control-password-file F]
      etcd user and role lpmos-control (every LPMOS key), etcd's root user if missing,
      then etcd's authentication on (add every region first: clients without a user stop)
  lpmos-control regions migrate copy NAME --to URL[,URL] [REGION ETCD FLAGS] [--force]
  lpmos-control regions migrate verify|register|finish|abort NAME
      move region NAME from the control plane's etcd to its own (docs/federation.md):
      copy its keys at one revision (stop its appliance first), verify both sides,
      register the target, then delete the region's keys from the control plane's etcd
      (finish --static: the target is in the control plane's --regions-file/--region
      instead of registered); abort forgets a migration not yet registered
each with --etcd-endpoints (env ETCD_ENDPOINTS; default 127.0.0.1:2379) and the etcd
administrator's --etcd-user and --etcd-password (env ETCD_USER, ETCD_PASSWORD) for the
control plane's etcd; REGION ETCD FLAGS are how the control plane dials the region's:
--region-etcd-cacert, --region-etcd-cert, --region-etcd-key, --region-etcd-user,
--region-etcd-password-file (files on the control plane's host: stored as paths);
--dial-timeout (default 30s) bounds the wait for each etcd to answer`

func regionsCmd(ctx context.Context, args []string, env Env) error {
	if len(args) == 0 {
		return fmt.Errorf("regions: which subcommand?\n%s", regionsUsage)
	}
	cmd, rest := args[0], args[1:]
	if cmd == "migrate" {
		if len(rest) == 0 {
			return fmt.Errorf("regions migrate: which step (copy, verify, register, finish, abort)?\n%s", regionsUsage)
		}
		cmd, rest = "migrate "+rest[0], rest[1:]
	}
	fs := flag.NewFlagSet("lpmos-control regions "+cmd, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	endpoints := fs.String("etcd-endpoints", "", "comma-separated etcd endpoints (env ETCD_ENDPOINTS; default 127.0.0.1:2379)")
	// The etcd administrator (root once etcd's auth is on): certificate or user/password.
	var creds store.Credentials
	creds.AddFlags(fs)
	pwFile := fs.String("password-file", "", "add: file whose first line is region-NAME's password (default: none, client certificate auth)")
	rootPwFile := fs.String("root-password-file", "", "enable-auth: password of the root user it creates (default: none, client certificate CN root)")
	controlPwFile := fs.String("control-password-file", "", "enable-auth: password of user lpmos-control (default: none, client certificate CN lpmos-control)")
	regionEtcd := fs.String("etcd", "", "add: the region's own etcd endpoints (comma-separated): register them")
	to := fs.String("to", "", "migrate copy: the region's own etcd endpoints (comma-separated) to copy it to")
	var rc store.RegionCluster
	fs.StringVar(&rc.CACert, "region-etcd-cacert", "", "add --etcd, migrate copy: CA of the region's etcd")
	fs.StringVar(&rc.Cert, "region-etcd-cert", "", "add --etcd, migrate copy: the control plane's client certificate for the region's etcd")
	fs.StringVar(&rc.Key, "region-etcd-key", "", "key of --region-etcd-cert")
	fs.StringVar(&rc.User, "region-etcd-user", "", "add --etcd, migrate copy: the control plane's etcd user in the region's etcd (when no certificate names it)")
	fs.StringVar(&rc.PasswordFile, "region-etcd-password-file", "", "file holding --region-etcd-user's password")
	role := fs.Bool("role", false, "add --etcd: also create etcd user and role region-NAME in the region's etcd (needs its administrator)")
	force := fs.Bool("force", false, "remove: even with open tasks; add --etcd: even if the control plane's etcd holds keys of the region; migrate copy: replace the target's keys of the region, copy with the appliance alive")
	static := fs.Bool("static", false, "migrate finish: the target is named in the control plane's --regions-file or --region, not registered")
	dialTimeout := fs.Duration("dial-timeout", 30*time.Second, "how long to wait for each etcd to answer")
	pos, err := cliflag.ParseInterleaved(fs, rest)
	if err != nil {
		return err
	}
	want := map[string]int{"add": 1, "show": 1, "enable-auth": 0, "remove": 1, "list": 0,
		"migrate copy": 1, "migrate verify": 1, "migrate register": 1, "migrate finish": 1, "migrate abort": 1}
	n, known := want[cmd]
	if !known {
		return fmt.Errorf("regions: unknown subcommand %q\n%s", cmd, regionsUsage)
	}
	if len(pos) != n {
		return fmt.Errorf("regions %s: want %d argument(s), got %q\n%s", cmd, n, pos, regionsUsage)
	}
	var region string
	if n == 1 {
		region = pos[0]
		if err := store.ValidateRegion(region); err != nil {
			return fmt.Errorf("regions %s: %w", cmd, err)
		}
	}
	// Flags that belong to another subcommand are refused, not ignored.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	withCluster := (cmd == "add" && *regionEtcd != "") || cmd == "migrate copy"
	for name, ok := range map[string]bool{
		"etcd": cmd == "add", "to": cmd == "migrate copy", "role": cmd == "add" && *regionEtcd != "",
		"force":              cmd == "remove" || cmd == "migrate copy" || (cmd == "add" && *regionEtcd != ""),
		"region-etcd-cacert": withCluster, "region-etcd-cert": withCluster, "region-etcd-key": withCluster,
		"region-etcd-user": withCluster, "region-etcd-password-file": withCluster,
		"password-file": cmd == "add" && (*regionEtcd == "" || *role),
		"static":        cmd == "migrate finish",
	} {
		if set[name] && !ok {
			return fmt.Errorf("regions %s: --%s does not apply here\n%s", cmd, name, regionsUsage)
		}
	}
	if withCluster {
		eps := *regionEtcd
		if cmd == "migrate copy" {
			if eps = *to; eps == "" {
				return fmt.Errorf("regions migrate copy: --to URL[,URL] (the region's own etcd) is required")
			}
		}
		if rc, err = regionCluster(region, eps, rc); err != nil {
			return fmt.Errorf("regions %s: %w", cmd, err)
		}
	}
	// Passwords first: nothing is written when a file is unreadable.
	secrets := map[string]string{}
	for flagName, f := range map[string]*string{"--password-file": pwFile, "--root-password-file": rootPwFile, "--control-password-file": controlPwFile} {
		if *f == "" {
			continue
		}
		pw, err := readPasswordFile(*f)
		if err != nil {
			return fmt.Errorf("%s: %w", flagName, err)
		}
		secrets[flagName] = pw
	}
	creds.FromEnv(fs, env.Getenv)

	r := regionsRun{env: env, out: env.Stdout, region: region, force: *force, dialTimeout: *dialTimeout,
		home: store.DialConfig{Endpoints: splitEndpoints(*endpoints, env.Getenv), Credentials: creds}}
	// The region's cluster first: one that does not answer or refuses the credentials
	// stops the command before anything is written.
	var regionSt *store.Store
	if withCluster {
		if regionSt, err = r.dialRegion(ctx, rc); err != nil {
			return err
		}
		defer regionSt.Close()
	}
	st, err := r.dialHome(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	host, _ := os.Hostname()
	who := env.Getenv("USER")
	if who == "" {
		who = fmt.Sprintf("uid%d", os.Getuid())
	}
	ctx = store.WithActor(ctx, store.Actor{Kind: store.ActorSystem, Name: "cli", Source: "local:" + who + "@" + host})
	timeout := 30 * time.Second
	if strings.HasPrefix(cmd, "migrate ") {
		timeout = 10 * time.Minute // a region of many thousand tasks
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := env.Stdout

	switch cmd {
	case "add":
		if regionSt != nil {
			return r.register(ctx, st, regionSt, rc, *role, secrets["--password-file"])
		}
		if err := st.EnsureRegionRole(ctx, region, secrets["--password-file"]); err != nil {
			return err
		}
		fmt.Fprintf(out, "etcd user and role %s: read-write on region %s's keys only\n", store.RegionUser(region), region)
		return showRole(ctx, st, store.RegionUser(region), env)
	case "remove":
		return r.remove(ctx, st)
	case "list":
		return r.list(ctx, st)
	case "show":
		return r.show(ctx, st)
	case "enable-auth":
		if err := st.EnsureControlRole(ctx, secrets["--control-password-file"]); err != nil {
			return err
		}
		if err := st.EnableAuth(ctx, secrets["--root-password-file"]); err != nil {
			return err
		}
		fmt.Fprintf(out, "etcd auth is on: the control plane dials as %s, each region's appliance as region-NAME, administration as root\n", store.ControlUser)
	case "migrate copy":
		m := federation.Migration{Home: st, Target: regionSt, Region: region, Out: out}
		if _, err := m.Copy(ctx, rc, *force); err != nil {
			return err
		}
		fmt.Fprintf(out, "next: lpmos-control regions migrate verify %s; then register %s (the control plane serves it from there) and start its appliance on that etcd\n", region, region)
	case "migrate abort":
		return federation.Migration{Home: st, Region: region, Out: out}.Abort(ctx)
	default: // migrate verify, register, finish: the target is the one recorded by the copy
		rec, err := st.GetRegionMigration(ctx, region)
		if err != nil {
			return fmt.Errorf("regions %s %s: %w (start with regions migrate copy %s --to URL)", cmd, region, err, region)
		}
		target, err := r.dialRegion(ctx, rec.Target)
		if err != nil {
			return err
		}
		defer target.Close()
		m := federation.Migration{Home: st, Target: target, Region: region, Out: out}
		switch cmd {
		case "migrate verify":
			if _, err := m.Verify(ctx); err != nil {
				return err
			}
			fmt.Fprintf(out, "verified: region %s's copy is complete\n", region)
		case "migrate register":
			if err := m.Register(ctx); err != nil {
				return err
			}
			fmt.Fprintf(out, "next: start region %s's appliance on its own etcd (--etcd-endpoints %s, or its embedded etcd with this data), check it in the UI, then lpmos-control regions migrate finish %s\n",
				region, strings.Join(rec.Target.Endpoints, ","), region)
		case "migrate finish":
			return m.Finish(ctx, *static)
		}
	}
	return nil
}

// regionCluster is a region's cluster from the flags: endpoints split, file paths
// made absolute (the control plane reads them, from its own working directory).
func regionCluster(region, endpoints string, rc store.RegionCluster) (store.RegionCluster, error) {
	rc.Region = region
	for _, e := range strings.Split(endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			rc.Endpoints = append(rc.Endpoints, e)
		}
	}
	for _, f := range []*string{&rc.CACert, &rc.Cert, &rc.Key, &rc.PasswordFile} {
		if *f == "" {
			continue
		}
		abs, err := filepath.Abs(*f)
		if err != nil {
			return rc, err
		}
		*f = abs
	}
	if err := rc.Validate(); err != nil {
		return rc, err
	}
	return rc, nil
}

// regionsRun is one regions command's dialling and shared flags.
type regionsRun struct {
	env         Env
	out         io.Writer
	region      string
	force       bool
	dialTimeout time.Duration
	home        store.DialConfig
}

func (r regionsRun) dialHome(ctx context.Context) (*store.Store, error) {
	openCtx, cancel := context.WithTimeout(ctx, r.dialTimeout)
	st, err := store.Open(openCtx, r.home)
	cancel()
	if store.CredentialsRefused(err) {
		return nil, fmt.Errorf("%w: with etcd's auth on, give root's --etcd-user and --etcd-password", err)
	}
	return st, err
}

func (r regionsRun) dialRegion(ctx context.Context, rc store.RegionCluster) (*store.Store, error) {
	openCtx, cancel := context.WithTimeout(ctx, r.dialTimeout)
	st, err := store.Open(openCtx, rc.DialConfig())
	cancel()
	if err != nil {
		return nil, fmt.Errorf("region %s's etcd (%s): %w (the --region-etcd-* flags are its --etcd-* ones; nothing written)",
			rc.Region, strings.Join(rc.Endpoints, ","), err)
	}
	return st, nil
}

// register registers the region's own cluster (regionSt answered already), after
// making sure no region's keys are hidden by it in the control plane's etcd.
func (r regionsRun) register(ctx context.Context, home, regionSt *store.Store, rc store.RegionCluster, role bool, password string) error {
	if role {
		if err := regionSt.EnsureRegionRole(ctx, r.region, password); err != nil {
			return fmt.Errorf("region %s's etcd: %w (nothing registered)", r.region, err)
		}
		fmt.Fprintf(r.out, "etcd user and role %s in region %s's etcd: read-write on its keys only\n", store.RegionUser(r.region), r.region)
	}
	if left, err := home.ReadRegionKeys(ctx, r.region, 0); err != nil {
		return err
	} else if n := left.Count() + len(left.Leased); n > 0 && !r.force {
		return fmt.Errorf("region %s has %d key(s) in the control plane's etcd (its tasks, reports, audit): registering another cluster hides them; "+
			"move them with lpmos-control regions migrate copy %s --to %s (or --force)", r.region, n, r.region, strings.Join(rc.Endpoints, ","))
	}
	if err := home.PutRegionCluster(ctx, rc); err != nil {
		return err
	}
	fmt.Fprintf(r.out, "region %s: registered its own etcd %s: the control plane reads and writes region %s there\n",
		r.region, strings.Join(rc.Endpoints, ","), r.region)
	return nil
}

// openStatuses are the statuses of a task still under way.
var openStatuses = []store.Status{store.StatusPending, store.StatusPendingApproval, store.StatusApproved, store.StatusInstalling}

func (r regionsRun) remove(ctx context.Context, home *store.Store) error {
	c, ok, err := registration(ctx, home, r.region)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("regions remove %s: region %s has no etcd of its own registered (it is in the control plane's etcd, or named by --regions-file/--region, which only the control plane's configuration changes)", r.region, r.region)
	}
	if !r.force {
		if rec, err := home.GetRegionMigration(ctx, r.region); err == nil {
			return fmt.Errorf("regions remove %s: its migration is in progress (copied at revision %d of the control plane's etcd): "+
				"without the registration the control plane reads that old copy; finish the migration, or --force", r.region, rec.SourceRevision)
		}
		st, err := r.dialRegion(ctx, c)
		if err != nil {
			return fmt.Errorf("regions remove %s: cannot count its open tasks: %w (--force removes anyway)", r.region, err)
		}
		defer st.Close()
		open := 0
		for _, s := range openStatuses {
			n, err := st.CountTasks(ctx, r.region, s)
			if err != nil {
				return fmt.Errorf("regions remove %s: count its %s tasks: %w", r.region, s, err)
			}
			open += n
		}
		if open > 0 {
			return fmt.Errorf("regions remove %s: the region has %d open task(s) in its etcd (%s): the control plane would no longer see them; "+
				"complete or cancel them, or --force", r.region, open, strings.Join(c.Endpoints, ","))
		}
	}
	if _, err := home.DeleteRegionCluster(ctx, r.region); err != nil {
		return err
	}
	fmt.Fprintf(r.out, "region %s: registration of its etcd %s removed (its keys there are untouched); the control plane looks for it in its own etcd again\n",
		r.region, strings.Join(c.Endpoints, ","))
	return nil
}

func registration(ctx context.Context, home *store.Store, region string) (store.RegionCluster, bool, error) {
	cs, _, _, err := home.RegionClusters(ctx)
	if err != nil {
		return store.RegionCluster{}, false, err
	}
	c, ok := registrationIn(cs, region)
	return c, ok, nil
}

// layouts is each known region's layout line: the regions of the control plane's
// etcd (heartbeats, tasks) and the registered ones, with migrations in progress.
func layouts(ctx context.Context, home *store.Store) (map[string]string, error) {
	regions, err := home.ListRegions(ctx)
	if err != nil {
		return nil, err
	}
	cs, bad, _, err := home.RegionClusters(ctx)
	if err != nil {
		return nil, err
	}
	migs, err := home.RegionMigrations(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, r := range regions {
		state := "offline"
		if r.Online {
			state = "online"
		}
		out[r.Name] = "shared  the control plane's etcd (" + state + ")"
	}
	for _, c := range cs {
		out[c.Region] = "own     " + strings.Join(c.Endpoints, ",")
	}
	for _, name := range bad {
		out[name] = "own?    registration unreadable: lpmos-control regions add " + name + " --etcd URL rewrites it"
	}
	for _, m := range migs {
		next := "register"
		if _, ok := registrationIn(cs, m.Region); ok {
			next = "finish"
		}
		out[m.Region] += fmt.Sprintf("  [migration: %d key(s) copied at revision %d to %s; next: %s]",
			m.Keys, m.SourceRevision, strings.Join(m.Target.Endpoints, ","), next)
	}
	return out, nil
}

func registrationIn(cs []store.RegionCluster, region string) (store.RegionCluster, bool) {
	for _, c := range cs {
		if c.Region == region {
			return c, true
		}
	}
	return store.RegionCluster{}, false
}

func (r regionsRun) list(ctx context.Context, home *store.Store) error {
	ls, err := layouts(ctx, home)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(ls))
	for n := range ls {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(r.out, "%-12s %s\n", n, ls[n])
	}
	if len(names) == 0 {
		fmt.Fprintln(r.out, "no region yet")
	}
	fmt.Fprintln(r.out, "(regions named by the control plane's --regions-file or --region flags are not listed here; they win over a registration)")
	return nil
}

func (r regionsRun) show(ctx context.Context, home *store.Store) error {
	ls, err := layouts(ctx, home)
	if err != nil {
		return err
	}
	l, ok := ls[r.region]
	if !ok {
		l = "shared  the control plane's etcd (nothing there yet)"
	}
	fmt.Fprintf(r.out, "region %s: %s\n", r.region, l)
	if strings.HasPrefix(l, "own") {
		fmt.Fprintf(r.out, "(its etcd role %s is in its own etcd: regions show %s --etcd-endpoints URL there)\n", store.RegionUser(r.region), r.region)
		return nil
	}
	fmt.Fprintf(r.out, "etcd role %s:\n", store.RegionUser(r.region))
	return showRole(ctx, home, store.RegionUser(r.region), r.env)
}

func showRole(ctx context.Context, st *store.Store, role string, env Env) error {
	perms, err := st.RolePermissions(ctx, role)
	if err != nil {
		return err
	}
	for _, p := range perms {
		fmt.Fprintf(env.Stdout, "  %s\n", p)
	}
	return nil
}

// readPasswordFile is the file's first line; an empty one is an error, not "no password".
func readPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimRight(pw, "\r")
	if pw == "" {
		return "", errors.New("the file's first line is empty")
	}
	return pw, nil
}
