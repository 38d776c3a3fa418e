// Command lpmos-appliance is the regional appliance. See package appliance.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"lpmos.dev/lpmos/appliance"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run := func() error { return appliance.Run(ctx, os.Args[1:], os.Getenv, os.Stderr) }
	if len(os.Args) > 1 && os.Args[1] == "tasks" { // break-glass: appliance/taskscmd.go
		run = func() error { return appliance.Tasks(ctx, os.Args[2:], os.Getenv, os.Stdout, os.Stderr) }
	}
	if err := run(); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "lpmos-appliance:", err)
		os.Exit(1)
	}
}
