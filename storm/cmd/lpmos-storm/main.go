// Command lpmos-storm plays a boot storm of N machines against one appliance and its
// control plane and prints per-stage latency (package storm). Exit status 0 only when
// every machine finished.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"lpmos.dev/lpmos/storm"
)

func main() {
	var c storm.Config
	var tokenFile, base, dhcpAddr string
	var dhcp bool
	var timeout time.Duration
	flag.StringVar(&c.ApplianceURL, "appliance-url", "http://127.0.0.1:8081", "the appliance's regional API and HTTP boot")
	flag.StringVar(&c.ControlURL, "control-url", "http://127.0.0.1:8080", "the control plane (tasks are created and approved there)")
	flag.StringVar(&tokenFile, "token-file", "run/admin-token", "an operator's or admin's API token for the control plane (env LPMOS_TOKEN wins)")
	flag.StringVar(&c.Region, "region", "dc1", "the appliance's region")
	flag.StringVar(&c.OSType, "os-type", "ubuntu", "OS of the tasks (in the region's catalog)")
	flag.StringVar(&c.OSVersion, "os-version", "22.04", "OS version of the tasks")
	flag.IntVar(&c.Machines, "n", 200, "machines")
	flag.IntVar(&c.UnknownEvery, "unknown-every", 10, "every k-th machine has no task and ends as an unmatched report (0: none)")
	flag.StringVar(&base, "source-base", "127.1.0.0", "machine i binds its sockets to this address + i + 1 (all of 127/8 is local on Linux)")
	flag.BoolVar(&dhcp, "dhcp", false, "proxy-DHCP stage (the appliance with --dhcp-mode=proxy --boot-server-ip=127.0.0.1: ports 67 and 4011, root)")
	flag.StringVar(&dhcpAddr, "dhcp-addr", "127.0.0.1:4011", "the appliance's proxy-DHCP port")
	flag.StringVar(&c.TFTPAddr, "tftp", "", "the appliance's --tftp-addr (empty: no TFTP stage)")
	flag.DurationVar(&c.Ramp, "ramp", 0, "start the machines spread over this (0: all at once)")
	flag.IntVar(&c.Approvers, "approvers", 4, "operator workers creating and approving tasks")
	flag.IntVar(&c.AppliancePID, "appliance-pid", 0, "the appliance's PID, for its CPU seconds and peak RSS")
	flag.DurationVar(&timeout, "timeout", 10*time.Minute, "the whole storm's deadline")
	flag.Parse()
	fail := func(err error) { fmt.Fprintln(os.Stderr, "lpmos-storm:", err); os.Exit(2) }
	var err error
	if c.SourceBase, err = netip.ParseAddr(base); err != nil || !c.SourceBase.Is4() {
		fail(fmt.Errorf("--source-base %q: not an IPv4 address", base))
	}
	if c.ControlToken = os.Getenv("LPMOS_TOKEN"); c.ControlToken == "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			fail(fmt.Errorf("the control plane's token: %w (set LPMOS_TOKEN or --token-file)", err))
		}
		c.ControlToken = strings.TrimSpace(string(b))
	}
	if dhcp {
		c.DHCPAddr = dhcpAddr
	}
	c.Log = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := storm.Run(ctx, c)
	res.Print(os.Stdout)
	if err != nil {
		fail(err)
	}
	if res.Finished != res.Machines {
		os.Exit(1)
	}
}
