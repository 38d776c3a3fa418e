// Command lpmos-agent inventories this machine, reports it to its region's appliance,
// waits for approval and installs the image. On a host: --regional-url and --target.
// In the initramfs: --initramfs, settings from the kernel command line.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"lpmos.dev/lpmos/agent-initramfs/agent"
	"lpmos.dev/lpmos/contract"
)

func main() {
	// Anywhere in the arguments: u-root's init puts uroot.uinitargs= from the kernel
	// command line before the flags file's.
	if slices.Contains(os.Args[1:], initramfsFlag) {
		runInitramfs() // never returns
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "lpmos-agent: error:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	var cfg agent.Config
	fs := flag.NewFlagSet("lpmos-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.RegionalURL, "regional-url", "", "regional appliance URL, e.g. http://localhost:8081 (env REGIONAL_CLIENT_URL)")
	fs.StringVar(&cfg.AgentToken, "agent-token", "", "the task's agent token, for an agent that restarts after its first report (env LPMOS_AGENT_TOKEN; the first report issues it)")
	fs.StringVar(&cfg.MAC, "mac", "", "report as this MAC (default: the primary NIC's)")
	fs.StringVar(&cfg.Target, "target", "", "file (host mode) or block device to install the image into")
	fs.IntVar(&cfg.MaxAttempts, "max-attempts", 10, "report attempts while no task matches")
	fs.DurationVar(&cfg.PollInterval, "poll-interval", 5*time.Second, "approval poll interval")
	hardware := fs.String("hardware", "", "host mode: report the hardware in this JSON file (the report's \"hardware\") instead of this host's; needs --target (tests, demos)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *hardware != "" {
		// A made-up inventory names disks this host may have under other contents:
		// only ever write into --target.
		if cfg.Target == "" {
			return errors.New("--hardware needs --target: a made-up inventory never writes a real disk")
		}
		cfg.Inventory = func() (contract.Hardware, error) {
			var hw contract.Hardware
			b, err := os.ReadFile(*hardware)
			if err == nil {
				err = json.Unmarshal(b, &hw)
			}
			if err != nil {
				return hw, fmt.Errorf("--hardware: %w", err)
			}
			return hw, nil
		}
	}
	if cfg.RegionalURL == "" {
		cfg.RegionalURL = getenv("REGIONAL_CLIENT_URL")
	}
	if cfg.AgentToken == "" {
		cfg.AgentToken = getenv("LPMOS_AGENT_TOKEN")
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, nil))
	return agent.Run(ctx, cfg)
}
