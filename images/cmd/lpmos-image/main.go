// Command lpmos-image manages an appliance's images directory (add, list) and writes an
// image the way the agent does (write): see images/imagecmd.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"lpmos.dev/lpmos/images/imagecmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := imagecmd.Run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "lpmos-image:", err)
		os.Exit(1)
	}
}
