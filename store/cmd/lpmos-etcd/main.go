// Command lpmos-etcd runs a standalone embedded etcd (v3.6, the version LPMOS builds
// with) for the multi-process setup behind `make start-etcd`. Flags are etcd's own.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"lpmos.dev/lpmos/store/etcdserver"
)

func main() {
	var c etcdserver.Config
	c.TLS.AddFlags(flag.CommandLine, "") // --cert-file, --key-file, --trusted-ca-file, --client-cert-auth, --peer-*
	flag.StringVar(&c.Name, "name", "default", "member name")
	flag.StringVar(&c.DataDir, "data-dir", "default.etcd", "data directory")
	flag.StringVar(&c.ListenClientURLs, "listen-client-urls", "http://127.0.0.1:2379", "client URLs")
	flag.StringVar(&c.ListenPeerURLs, "listen-peer-urls", "http://127.0.0.1:2380", "peer URLs")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := etcdserver.Start(ctx, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lpmos-etcd:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "lpmos-etcd: serving clients on %v (data in %s); Ctrl-C stops\n", s.Endpoints(), c.DataDir)
	select {
	case <-ctx.Done():
	case err := <-s.Err():
		fmt.Fprintln(os.Stderr, "lpmos-etcd:", err)
	}
	s.Close()
}
