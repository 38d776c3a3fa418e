// Command lpmos-control is the control plane, and its administration commands (users,
// tokens, bootstrap). See package control.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"lpmos.dev/lpmos/control"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := control.Main(ctx, os.Args[1:], control.OSEnv()); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "lpmos-control:", err)
		os.Exit(1)
	}
}
