package control

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"lpmos.dev/lpmos/internal/cliflag"
	"lpmos.dev/lpmos/store"
)

// The administration commands of lpmos-control, run on the control host against etcd
// directly (whoever can reach etcd owns the system anyway):
//
//	lpmos-control users add NAME --role admin|operator|viewer   (password from stdin or a prompt)
//	lpmos-control users list
//	lpmos-control users disable NAME
//	lpmos-control tokens create --user NAME [--ttl 720h]         (prints the token once)
//	lpmos-control tokens list [--user NAME]
//	lpmos-control tokens revoke ID
//	lpmos-control bootstrap --out-dir DIR                        (first start: admin + token)

// Env is what a command takes from its process.
type Env struct {
	Getenv         func(string) string
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// ReadPassword reads a password from a terminal without echo; nil reads a line
	// from Stdin (a pipe).
	ReadPassword func(prompt string) (string, error)
}

// OSEnv is the process's environment; ReadPassword is set when stdin is a terminal.
func OSEnv() Env {
	e := Env{Getenv: os.Getenv, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	if fd := int(os.Stdin.Fd()); term.IsTerminal(fd) {
		e.ReadPassword = func(prompt string) (string, error) {
			fmt.Fprint(os.Stderr, prompt)
			b, err := term.ReadPassword(fd)
			fmt.Fprintln(os.Stderr)
			return string(b), err
		}
	}
	return e
}

// Main is lpmos-control: the server, or one of the administration commands.
func Main(ctx context.Context, args []string, env Env) error {
	if len(args) > 0 {
		switch args[0] {
		case "users", "tokens", "bootstrap":
			return admin(ctx, args, env)
		case "certs":
			return certsCmd(args[1:], env)
		case "regions":
			return regionsCmd(ctx, args[1:], env)
		}
	}
	return Run(ctx, args, env.Getenv, env.Stderr)
}

const adminUsage = `usage:
  lpmos-control users add NAME --role admin|operator|viewer   (password from stdin, or a prompt on a terminal)
  lpmos-control users list
  lpmos-control users disable NAME
  lpmos-control tokens create --user NAME [--ttl 720h]
  lpmos-control tokens list [--user NAME]
  lpmos-control tokens revoke ID
  lpmos-control bootstrap --out-dir DIR
each with --etcd-endpoints (env ETCD_ENDPOINTS; default 127.0.0.1:2379) and, for a TLS etcd,
--etcd-cacert, --etcd-cert, --etcd-key (env ETCD_CACERT, ETCD_CERT, ETCD_KEY)`

func admin(ctx context.Context, args []string, env Env) error {
	cmd := args[0]
	rest := args[1:]
	if cmd != "bootstrap" {
		if len(rest) == 0 {
			return fmt.Errorf("%s: which subcommand?\n%s", cmd, adminUsage)
		}
		cmd += " " + rest[0]
		rest = rest[1:]
	}
	switch cmd {
	case "users add", "users list", "users disable", "tokens create", "tokens list", "tokens revoke", "bootstrap":
	default:
		return fmt.Errorf("unknown command %q\n%s", cmd, adminUsage)
	}
	fs := flag.NewFlagSet("lpmos-control "+cmd, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	endpoints := fs.String("etcd-endpoints", "", "comma-separated etcd endpoints (env ETCD_ENDPOINTS; default 127.0.0.1:2379)")
	var creds store.Credentials
	creds.AddFlags(fs)
	role := fs.String("role", "", "users add: admin, operator or viewer")
	user := fs.String("user", "", "tokens: the user the token belongs to")
	ttl := fs.Duration("ttl", store.DefaultTokenTTL, "tokens create: how long the token is valid")
	outDir := fs.String("out-dir", "", "bootstrap: where to write admin-password and admin-token (mode 0600)")
	// Flags may come after the positional NAME or ID.
	pos, err := cliflag.ParseInterleaved(fs, rest)
	if err != nil {
		return err
	}
	want := map[string]int{"users add": 1, "users disable": 1, "tokens revoke": 1}[cmd]
	if len(pos) != want {
		return fmt.Errorf("%s: want %d argument(s), got %q\n%s", cmd, want, pos, adminUsage)
	}
	var name string
	if want == 1 {
		name = pos[0]
	}

	// Check what needs no etcd first.
	var password string
	switch cmd {
	case "users add":
		if err := store.ValidateUserName(name); err != nil {
			return err
		}
		if !store.Role(*role).Valid() {
			return fmt.Errorf("--role: %q is not one of admin, operator, viewer", *role)
		}
		var err error
		if password, err = readNewPassword(env); err != nil {
			return err
		}
	case "tokens create":
		if *user == "" {
			return errors.New("--user is required")
		}
	case "bootstrap":
		if *outDir == "" {
			return errors.New("--out-dir is required")
		}
	}

	creds.FromEnv(fs, env.Getenv)
	eps := splitEndpoints(*endpoints, env.Getenv)
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st, err := store.Open(openCtx, store.DialConfig{Endpoints: eps, Credentials: creds})
	cancel()
	if err != nil {
		return err
	}
	defer st.Close()
	host, _ := os.Hostname()
	who := env.Getenv("USER")
	if who == "" {
		who = fmt.Sprintf("uid%d", os.Getuid())
	}
	actor := store.Actor{Kind: store.ActorSystem, Name: "cli", Source: "local:" + who + "@" + host}
	if cmd == "bootstrap" {
		actor.Name = "bootstrap"
	}
	ctx = store.WithActor(ctx, actor)
	ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out := env.Stdout

	switch cmd {
	case "users add":
		u, err := st.AddUser(ctx, name, store.Role(*role), password)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "user %s added (role %s)\n", u.Name, u.Role)
	case "users list":
		users, err := st.ListUsers(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tSTATUS\tCREATED")
		for _, u := range users {
			status := "active"
			if u.Disabled {
				status = "disabled"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", u.Name, u.Role, status, u.CreatedAt.UTC().Format(time.RFC3339))
		}
		tw.Flush()
	case "users disable":
		if _, err := st.DisableUser(ctx, name); err != nil {
			return err
		}
		fmt.Fprintf(out, "user %s disabled: their password, tokens and sessions no longer work\n", name)
	case "tokens create":
		tok, secret, err := st.CreateToken(ctx, *user, *ttl)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stderr, "token %s for %s, expires %s; it is shown only now:\n", tok.ID, tok.User, tok.ExpiresAt.UTC().Format(time.RFC3339))
		fmt.Fprintln(out, secret)
	case "tokens list":
		toks, err := st.ListTokens(ctx, *user)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tUSER\tCREATED\tEXPIRES\tSTATUS")
		now := time.Now()
		for _, t := range toks {
			status := "active"
			switch {
			case t.RevokedAt != nil:
				status = "revoked"
			case !now.Before(t.ExpiresAt):
				status = "expired"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.User, t.CreatedAt.UTC().Format(time.RFC3339), t.ExpiresAt.UTC().Format(time.RFC3339), status)
		}
		tw.Flush()
	case "tokens revoke":
		t, err := st.RevokeToken(ctx, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "token %s of %s revoked\n", t.ID, t.User)
	case "bootstrap":
		return bootstrap(ctx, st, *outDir, out)
	}
	return nil
}

func splitEndpoints(flagValue string, getenv func(string) string) []string {
	if flagValue == "" {
		flagValue = getenv("ETCD_ENDPOINTS")
	}
	if flagValue == "" {
		flagValue = "127.0.0.1:2379"
	}
	var eps []string
	for _, p := range strings.Split(flagValue, ",") {
		if p = strings.TrimSpace(p); p != "" {
			eps = append(eps, p)
		}
	}
	return eps
}

// readNewPassword asks twice on a terminal, or reads one line from a pipe.
func readNewPassword(env Env) (string, error) {
	if env.ReadPassword != nil {
		pw, err := env.ReadPassword("Password: ")
		if err != nil {
			return "", err
		}
		again, err := env.ReadPassword("Again: ")
		if err != nil {
			return "", err
		}
		if pw != again {
			return "", errors.New("the passwords differ")
		}
		return pw, nil
	}
	line, err := bufio.NewReader(env.Stdin).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("reading the password from stdin: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if len(pw) < store.MinPasswordLen {
		return "", fmt.Errorf("the password must be at least %d characters", store.MinPasswordLen)
	}
	return pw, nil
}

// bootstrap creates user admin with a random password and an API token when etcd has
// no user yet, prints both once and writes them to DIR/admin-password and
// DIR/admin-token (0600). With users in etcd it does nothing.
func bootstrap(ctx context.Context, st *store.Store, dir string, out io.Writer) error {
	has, err := st.HasUsers(ctx)
	if err != nil {
		return err
	}
	if has {
		fmt.Fprintln(out, "lpmos-control bootstrap: users exist; nothing to do")
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	pwFile, tokFile := filepath.Join(dir, "admin-password"), filepath.Join(dir, "admin-token")
	password := store.RandomPassword()
	// Create first, so that a lost race (another bootstrap) leaves the files alone.
	created, token, err := st.Bootstrap(ctx, "admin", password, store.DefaultTokenTTL)
	if err != nil {
		return err
	}
	if !created {
		fmt.Fprintln(out, "lpmos-control bootstrap: users exist; nothing to do")
		return nil
	}
	for f, v := range map[string]string{pwFile: password, tokFile: token} {
		if err := writeSecret(f, v+"\n"); err != nil {
			return fmt.Errorf("%w (the credentials: admin / %s, token %s)", err, password, token)
		}
	}
	fmt.Fprintf(out, `
  First start: created the control plane's user "admin" (role admin). Shown only now:
    password:   %s   (also in %s)
    API token:  %s   (also in %s, valid %s)
  curl -H "Authorization: Bearer $(cat %s)" ...; more users: lpmos-control users add NAME --role operator

`, password, pwFile, token, tokFile, store.DefaultTokenTTL, tokFile)
	return nil
}

func writeSecret(path, v string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err == nil {
		_, err = f.WriteString(v)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}
