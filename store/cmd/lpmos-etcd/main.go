// Command lpmos-etcd runs one etcd member (v3.6, the version LPMOS builds with): alone
// behind `make start-etcd`, or one of a cluster's three on three hosts. Flags are etcd's
// own. `lpmos-etcd snapshot save|restore` are etcdctl's and etcdutl's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"lpmos.dev/lpmos/store/etcdserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "lpmos-etcd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "snapshot" {
		return snapshot(ctx, args[1:], stderr)
	}
	var c etcdserver.Config
	fs := flag.NewFlagSet("lpmos-etcd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.TLS.AddFlags(fs, "") // --cert-file, --key-file, --trusted-ca-file, --client-cert-auth, --peer-*
	fs.StringVar(&c.Name, "name", "default", "member name")
	fs.StringVar(&c.DataDir, "data-dir", "default.etcd", "data directory")
	fs.StringVar(&c.ListenClientURLs, "listen-client-urls", "http://127.0.0.1:2379", "client URLs")
	fs.StringVar(&c.ListenPeerURLs, "listen-peer-urls", "http://127.0.0.1:2380", "peer URLs")
	// Cluster membership, as etcd spells it (docs/etcd.md#cluster).
	fs.StringVar(&c.InitialCluster, "initial-cluster", "", "every member as name=peerURL, comma-separated (default: this member alone)")
	fs.StringVar(&c.InitialClusterState, "initial-cluster-state", "new", "new, or existing to join a running cluster (after etcdctl member add)")
	fs.StringVar(&c.InitialClusterToken, "initial-cluster-token", "etcd-cluster", "the cluster's token, the same on every member of one cluster")
	fs.StringVar(&c.AdvertisePeerURLs, "initial-advertise-peer-urls", "", "this member's peer URLs as the others reach them (default --listen-peer-urls)")
	fs.StringVar(&c.AdvertiseClientURLs, "advertise-client-urls", "", "this member's client URLs as clients reach them (default --listen-client-urls)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q (subcommand: snapshot save|restore)", fs.Args())
	}
	s, err := etcdserver.Start(ctx, c)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(stderr, "lpmos-etcd: member %s serving clients on %v (data in %s); Ctrl-C stops\n", c.Name, s.Endpoints(), c.DataDir)
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.Err():
		return err
	}
}

// snapshot is `snapshot save FILE --endpoints=...` and `snapshot restore FILE --data-dir=...`.
func snapshot(ctx context.Context, args []string, stderr io.Writer) error {
	const usage = "usage: lpmos-etcd snapshot save FILE --endpoints=HOST:PORT,... | snapshot restore FILE --data-dir=DIR [--name --initial-cluster --initial-cluster-token --initial-advertise-peer-urls]"
	if len(args) == 0 {
		return errors.New(usage)
	}
	verb := args[0]
	fs := flag.NewFlagSet("lpmos-etcd snapshot "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch verb {
	case "save":
		endpoints := fs.String("endpoints", "127.0.0.1:2379", "etcd endpoints, comma-separated (the first that answers streams the snapshot)")
		timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
		file, err := oneFile(fs, args[1:])
		if err != nil {
			return fmt.Errorf("%w\n%s", err, usage)
		}
		sctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		version, err := etcdserver.SaveSnapshot(sctx, strings.Split(*endpoints, ","), file)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "lpmos-etcd: snapshot saved to %s (storage version %s)\n", file, version)
		return nil
	case "restore":
		var c etcdserver.RestoreConfig
		fs.StringVar(&c.DataDir, "data-dir", "", "the new member's data directory (must not exist)")
		fs.StringVar(&c.Name, "name", "default", "the new member's name")
		fs.StringVar(&c.InitialCluster, "initial-cluster", "", "the new cluster's members, name=peerURL,... (default: this member alone)")
		fs.StringVar(&c.InitialClusterToken, "initial-cluster-token", "etcd-cluster", "the new cluster's token")
		fs.StringVar(&c.AdvertisePeerURLs, "initial-advertise-peer-urls", "http://127.0.0.1:2380", "the new member's peer URLs")
		file, err := oneFile(fs, args[1:])
		if err != nil {
			return fmt.Errorf("%w\n%s", err, usage)
		}
		c.Snapshot = file
		if err := etcdserver.RestoreSnapshot(c); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "lpmos-etcd: restored %s into %s (member %s); start it with --initial-cluster-state=new\n", file, c.DataDir, c.Name)
		return nil
	}
	return fmt.Errorf("unknown snapshot command %q\n%s", verb, usage)
}

// oneFile parses flags before and after the one FILE argument (etcdctl's order is
// `snapshot save FILE --endpoints=...`).
func oneFile(fs *flag.FlagSet, args []string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return "", err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 1 {
		return "", fmt.Errorf("want one snapshot FILE, got %q", pos)
	}
	return pos[0], nil
}
