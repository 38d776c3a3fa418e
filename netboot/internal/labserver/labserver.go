// Package labserver is netboot-lab: the netboot library alone (DHCP, TFTP, HTTP boot)
// with a Booter that boots every machine, for the benchmark scripts and to try the
// boot path without the appliance.
package labserver

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"lpmos.dev/lpmos/netboot"
	"lpmos.dev/lpmos/netboot/dhcpd"
	"lpmos.dev/lpmos/netboot/ipxe"
	"lpmos.dev/lpmos/netboot/tftpd"
)

// Run parses netboot-lab's flags and serves until ctx ends.
func Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("netboot-lab", flag.ContinueOnError)
	mode := fs.String("dhcp-mode", "off", "proxy|full|off")
	iface := fs.String("dhcp-interface", "", "interface to serve DHCP on")
	rng := fs.String("dhcp-range", "", "full mode: START,END")
	subnet := fs.String("dhcp-subnet", "", "full mode: subnet CIDR")
	router := fs.String("dhcp-router", "", "full mode: router (option 3)")
	serverIP := fs.String("boot-server-ip", "", "address advertised to clients (default: the receiving interface's)")
	tftpAddr := fs.String("tftp-addr", "", "TFTP listen address, e.g. :69 (empty: off)")
	tftpPerSource := fs.Int("tftp-max-per-source", 0, "TFTP transfers at once from one address (0: tftpd's default, 8; benchmarks from one host raise it)")
	httpAddr := fs.String("http-addr", "", "HTTP boot listen address, e.g. :8081 (empty: off)")
	kernel := fs.String("kernel", "", "kernel file served as vmlinuz")
	initrd := fs.String("initramfs", "", "initramfs file served under its base name")
	ipxeDir := fs.String("ipxe-dir", "", "iPXE binaries (default: embedded)")
	level := fs.String("log-level", "info", "debug|info|warn|error")
	cpuProfile := fs.String("cpu-profile", "", "write a pprof CPU profile of the whole run to this file (benchmarks)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	bins := ipxe.Binaries()
	if *ipxeDir != "" {
		bins = ipxe.BinariesDir(*ipxeDir)
	}
	files := map[string]string{}
	plan := &netboot.Plan{Kernel: "vmlinuz", Args: []string{"console=ttyS0"}}
	if *kernel != "" {
		files["vmlinuz"] = *kernel
	}
	if *initrd != "" {
		files[filepath.Base(*initrd)] = *initrd
		plan.Initrds = []string{filepath.Base(*initrd)}
	}
	booter := netboot.BooterFunc(func(ctx context.Context, m netboot.Machine) (*netboot.Plan, error) {
		log.Info("boot", "mac", m.MAC.String(), "stage", m.Stage, "arch", m.Arch, "firmware", m.Firmware)
		return plan, nil
	})
	g, ctx := errgroup.WithContext(ctx)

	httpPort := 8081
	if *httpAddr != "" {
		ln, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			return err
		}
		httpPort = ln.Addr().(*net.TCPAddr).Port
		h, err := ipxe.NewHandler(ipxe.Config{Booter: booter, Files: files, Binaries: bins, Logger: log})
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error { <-ctx.Done(); return srv.Close() })
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if *tftpAddr != "" {
		pc, err := tftpd.Listen(ctx, *tftpAddr)
		if err != nil {
			return err
		}
		s, err := tftpd.New(tftpd.Config{Files: bins, Logger: log, MaxPerSource: *tftpPerSource})
		if err != nil {
			return err
		}
		g.Go(func() error { return s.Serve(ctx, pc) })
	}
	if *mode != "off" {
		cfg := dhcpd.Config{Mode: dhcpd.Mode(*mode), Booter: booter, HTTPPort: httpPort, Binaries: bins, Logger: log}
		if *serverIP != "" {
			ip, err := netip.ParseAddr(*serverIP)
			if err != nil {
				return fmt.Errorf("--boot-server-ip: %w", err)
			}
			cfg.ServerIP = ip
		}
		if cfg.Mode == dhcpd.ModeFull {
			start, end, err := dhcpd.ParseRange(*rng)
			if err != nil {
				return fmt.Errorf("--dhcp-range: %w", err)
			}
			p := &dhcpd.Pool{Start: start, End: end, LeaseTime: time.Hour}
			if p.Subnet, err = netip.ParsePrefix(*subnet); err != nil {
				return fmt.Errorf("--dhcp-subnet: %w", err)
			}
			if *router != "" {
				if p.Router, err = netip.ParseAddr(*router); err != nil {
					return fmt.Errorf("--dhcp-router: %w", err)
				}
			}
			cfg.Pool, cfg.Leases = p, &dhcpd.MemLeases{}
		}
		s, err := dhcpd.New(cfg)
		if err != nil {
			return err
		}
		var conns []net.PacketConn
		for _, port := range []int{dhcpd.PortServer, dhcpd.PortPXE} {
			pc, err := dhcpd.Listen(ctx, ":"+strconv.Itoa(port), *iface)
			if err != nil {
				return err
			}
			conns = append(conns, pc)
		}
		g.Go(func() error { return s.Serve(ctx, conns...) })
	}
	log.Info("netboot-lab ready")
	return g.Wait()
}
