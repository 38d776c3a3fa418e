package control

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"lpmos.dev/lpmos/internal/cliflag"
	"lpmos.dev/lpmos/store"
)

// The etcd roles of regions (docs/etcd.md, "Regions and RBAC"), run by an etcd
// administrator (root, or anyone while etcd's auth is still off):
//
//	lpmos-control regions add NAME [--password-file F]     etcd user and role region-NAME
//	lpmos-control regions enable-auth [--root-password-file F] [--control-password-file F]
//	lpmos-control regions show NAME                        the role's permissions
const regionsUsage = `usage:
  lpmos-control regions add NAME [--password-file F]
      etcd user and role region-NAME: read-write on exactly NAME's keys (idempotent;
      without --password-file the user has no password: client certificate CN region-NAME)
  lpmos-control regions enable-auth [--root-password-file F] [--control-password-file F]
      etcd user and role lpmos-control (every LPMOS key), etcd's root user if missing,
      then etcd's authentication on (add every region first: clients without a user stop)
  lpmos-control regions show NAME
each with --etcd-endpoints (env ETCD_ENDPOINTS; default 127.0.0.1:2379) and the etcd
administrator's --etcd-user and --etcd-password (env ETCD_USER, ETCD_PASSWORD)`

func regionsCmd(ctx context.Context, args []string, env Env) error {
	if len(args) == 0 {
		return fmt.Errorf("regions: which subcommand?\n%s", regionsUsage)
	}
	cmd, rest := args[0], args[1:]
	fs := flag.NewFlagSet("lpmos-control regions "+cmd, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	endpoints := fs.String("etcd-endpoints", "", "comma-separated etcd endpoints (env ETCD_ENDPOINTS; default 127.0.0.1:2379)")
	// The etcd administrator (root once etcd's auth is on): certificate or user/password.
	var creds store.Credentials
	creds.AddFlags(fs)
	pwFile := fs.String("password-file", "", "add: file whose first line is region-NAME's password (default: none, client certificate auth)")
	rootPwFile := fs.String("root-password-file", "", "enable-auth: password of the root user it creates (default: none, client certificate CN root)")
	controlPwFile := fs.String("control-password-file", "", "enable-auth: password of user lpmos-control (default: none, client certificate CN lpmos-control)")
	pos, err := cliflag.ParseInterleaved(fs, rest)
	if err != nil {
		return err
	}
	want := map[string]int{"add": 1, "show": 1, "enable-auth": 0}
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

	eps := splitEndpoints(*endpoints, env.Getenv)
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st, err := store.Open(openCtx, store.DialConfig{Endpoints: eps, Credentials: creds})
	cancel()
	if store.CredentialsRefused(err) {
		return fmt.Errorf("%w: with etcd's auth on, give root's --etcd-user and --etcd-password", err)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out := env.Stdout

	switch cmd {
	case "add":
		if err := st.EnsureRegionRole(ctx, region, secrets["--password-file"]); err != nil {
			return err
		}
		fmt.Fprintf(out, "etcd user and role %s: read-write on region %s's keys only\n", store.RegionUser(region), region)
		return showRole(ctx, st, store.RegionUser(region), env)
	case "show":
		return showRole(ctx, st, store.RegionUser(region), env)
	case "enable-auth":
		if err := st.EnsureControlRole(ctx, secrets["--control-password-file"]); err != nil {
			return err
		}
		if err := st.EnableAuth(ctx, secrets["--root-password-file"]); err != nil {
			return err
		}
		fmt.Fprintf(out, "etcd auth is on: the control plane dials as %s, each region's appliance as region-NAME, administration as root\n", store.ControlUser)
	}
	return nil
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
