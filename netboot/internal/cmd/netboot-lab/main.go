// Command netboot-lab runs the netboot library alone (DHCP, TFTP, HTTP boot)
// with a Booter that boots every machine: for the benchmark scripts, and to try
// the boot path without the appliance. The logic is in package labserver.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"lpmos.dev/lpmos/netboot/internal/labserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := labserver.Run(ctx, os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "netboot-lab:", err)
		os.Exit(1)
	}
}
