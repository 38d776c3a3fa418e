package appliance

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"lpmos.dev/lpmos/netboot"
	"lpmos.dev/lpmos/netboot/dhcpd"
	"lpmos.dev/lpmos/netboot/ipxe"
	"lpmos.dev/lpmos/netboot/tftpd"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// Names under which the HTTP boot handler serves --kernel and --initramfs.
const (
	kernelName    = "vmlinuz"
	initramfsName = "initramfs.cpio.gz"
)

func (b BootConfig) mode() string {
	if b.DHCPMode != "" {
		return b.DHCPMode
	}
	if b.DHCPInterface != "" {
		return "proxy"
	}
	return "off"
}

func (b BootConfig) validate() error {
	switch b.mode() {
	case "off", "proxy":
	case "full":
		if b.DHCPRange == "" {
			return errors.New("--dhcp-mode=full needs --dhcp-range")
		}
		if _, _, err := dhcpd.ParseRange(b.DHCPRange); err != nil {
			return fmt.Errorf("--dhcp-range: %w", err)
		}
	default:
		return fmt.Errorf("--dhcp-mode: %q is not proxy, full or off", b.DHCPMode)
	}
	if b.BootServerIP != "" {
		if ip, err := netip.ParseAddr(b.BootServerIP); err != nil || !ip.Is4() {
			return fmt.Errorf("--boot-server-ip: %q is not an IPv4 address", b.BootServerIP)
		}
	}
	if b.mode() != "off" && b.DHCPInterface == "" && b.BootServerIP == "" {
		return errors.New("--dhcp-mode needs --dhcp-interface or --boot-server-ip")
	}
	for _, a := range strings.Fields(b.KernelArgs) {
		if err := netboot.CheckWord("--kernel-args", a); err != nil {
			return err
		}
	}
	return nil
}

// Boot decides what a machine boots (netboot.Booter). Its latest task in this region
// says: completed -> its local disk (a PXE-first server must not loop into the
// installer); open -> the agent with the task id; none, failed or cancelled -> the
// agent too when --boot-unknown (it gets inventoried and shows up as an unmatched
// report; nothing is written without approval), otherwise silence.
// (netboot's DHCP turns a local-disk plan at the firmware stage into a boot file that
// fails at once, so the firmware moves on to the disk by itself; iPXE gets the
// local-disk script.)
func (a *Appliance) Boot(ctx context.Context, m netboot.Machine) (*netboot.Plan, error) {
	// A DHCP client retransmits after a few seconds, and an iPXE script request must
	// not hang on an unreachable etcd.
	ctx, cancel := context.WithTimeout(ctx, httpjson.RequestDeadline)
	defer cancel()
	mac := m.MAC.String()
	t, err := timeStore(a.metrics, "latest_task", func() (store.Task, error) { return a.store.LatestTaskForMAC(ctx, a.cfg.Label, mac) })
	switch {
	case err == nil && t.Status == store.StatusCompleted:
		return &netboot.Plan{LocalDisk: true, TaskID: t.TaskID}, nil
	case err == nil && t.Status.Open():
		p := a.agentPlan(t.TaskID)
		if m.Stage == netboot.StageScript {
			p.AgentToken = a.bootToken(t)
		}
		return p, nil
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return nil, err
	}
	if !a.cfg.Boot.BootUnknown {
		return nil, nil
	}
	return a.agentPlan(""), nil
}

func (a *Appliance) agentPlan(taskID string) *netboot.Plan {
	return &netboot.Plan{
		Kernel: kernelName, Initrds: []string{initramfsName},
		RegionalURL: a.bootURL, TaskID: taskID,
		Args: strings.Fields(a.cfg.Boot.KernelArgs),
	}
}

// startBoot mounts the HTTP boot handler and opens the DHCP and TFTP sockets as
// configured, registering a closer for each. It returns the servers for run (each
// stops when its ctx ends).
func (a *Appliance) startBoot(ctx context.Context, mux *http.ServeMux, port int) ([]func(context.Context) error, error) {
	b := a.cfg.Boot
	log := a.log
	var bins fs.FS = ipxe.Binaries()
	if b.IPXEDir != "" {
		bins = ipxe.BinariesDir(b.IPXEDir)
	}
	for _, f := range []string{ipxe.FileBIOS, ipxe.FileEFIx64} {
		if !ipxe.HasBinary(bins, f) {
			log.Warn("iPXE binary missing: machines needing it cannot boot (run scripts/fetch-ipxe.sh or pass --ipxe-dir)", "file", f)
		}
	}
	files := map[string]string{}
	for name, path := range map[string]string{kernelName: b.Kernel, initramfsName: b.Initramfs} {
		if _, err := os.Stat(path); err != nil {
			log.Warn("boot file missing: machines cannot boot the agent until it exists (make initramfs)", "file", path)
		}
		files[name] = path
	}

	serverIP, err := a.bootServerIP()
	if err != nil {
		return nil, err
	}
	if serverIP.IsValid() {
		a.bootURL = "http://" + net.JoinHostPort(serverIP.String(), strconv.Itoa(port))
	}
	h, err := ipxe.NewHandler(ipxe.Config{Booter: a, Files: files, Binaries: bins, Logger: log, BaseURL: a.bootURL})
	if err != nil {
		return nil, fmt.Errorf("--boot-server-ip: HTTP boot: %w", err)
	}
	counted := a.metrics.countBytes("boot", h)
	mux.Handle(ipxe.PathBootstrap, counted)
	mux.Handle("/boot/", counted)
	mux.Handle(ipxe.PathBinaries, counted)

	var servers []func(context.Context) error
	if mode := b.mode(); mode != "off" {
		cfg := dhcpd.Config{Mode: dhcpd.Mode(mode), Booter: a, ServerIP: serverIP, HTTPPort: port, Binaries: bins, Logger: log, Observe: a.metrics.dhcpObserve}
		if mode == "full" {
			if !a.bootSubnet.IsValid() {
				return nil, fmt.Errorf("--dhcp-mode=full: --boot-server-ip %s is not an address of --dhcp-interface %q (or of any interface): the boot subnet is unknown", serverIP, b.DHCPInterface)
			}
			start, end, _ := dhcpd.ParseRange(b.DHCPRange)
			pool := &dhcpd.Pool{Start: start, End: end, LeaseTime: b.DHCPLeaseTime, Subnet: a.bootSubnet}
			if b.DHCPRouter != "" {
				if pool.Router, err = netip.ParseAddr(b.DHCPRouter); err != nil {
					return nil, fmt.Errorf("--dhcp-router: %w", err)
				}
			}
			for _, d := range splitList(b.DHCPDNS) {
				ip, err := netip.ParseAddr(d)
				if err != nil {
					return nil, fmt.Errorf("--dhcp-dns: %w", err)
				}
				pool.DNS = append(pool.DNS, ip)
			}
			// Group commit: one etcd transaction (one fsync) for all the
			// leases ACKed meanwhile, each ACK still after its lease is stored;
			// to the embedded etcd in-process (store.LeaseWriter).
			var local *store.Store
			if a.etcd != nil {
				lc := a.etcd.LocalClient()
				a.closers.add(func() { lc.Close() })
				local = store.New(lc)
			}
			cfg.Pool, cfg.Leases = pool, dhcpd.NewGroupCommit(&etcdLeases{s: a.store, w: store.NewLeaseWriter(a.store, local), region: a.cfg.Label})
		}
		srv, err := dhcpd.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("--dhcp-mode=%s: %w", mode, err)
		}
		var conns []net.PacketConn
		for _, p := range []int{dhcpd.PortServer, dhcpd.PortPXE} {
			c, err := dhcpd.Listen(ctx, ":"+strconv.Itoa(p), b.DHCPInterface)
			if err != nil {
				return nil, fmt.Errorf("--dhcp-mode=%s: %w (DHCP needs root or CAP_NET_BIND_SERVICE)", mode, err)
			}
			a.closers.add(func() { c.Close() })
			conns = append(conns, c)
		}
		if err := a.step(stepDHCP); err != nil {
			return nil, err
		}
		log.Info("DHCP serving", "mode", mode, "interface", b.DHCPInterface, "boot_server", serverIP, "boot_unknown", b.BootUnknown)
		servers = append(servers, func(ctx context.Context) error { return srv.Serve(ctx, conns...) })
	}
	if b.TFTPAddr != "" {
		t, err := tftpd.New(tftpd.Config{Files: bins, Logger: log, Observe: a.metrics.tftpObserve})
		if err != nil {
			return nil, fmt.Errorf("--tftp-addr: %w", err)
		}
		conn, err := tftpd.Listen(ctx, b.TFTPAddr)
		switch {
		case errors.Is(err, syscall.EACCES) && os.Geteuid() != 0:
			log.Warn("TFTP off: port refused without root (run as root, or pass --tftp-addr=:6969 or --tftp-addr= to silence this)", "addr", b.TFTPAddr)
		case err != nil:
			return nil, fmt.Errorf("--tftp-addr: %w", err)
		default:
			a.closers.add(func() { conn.Close() })
			if err := a.step(stepTFTP); err != nil {
				return nil, err
			}
			servers = append(servers, func(ctx context.Context) error { return t.Serve(ctx, conn) })
		}
	}
	return servers, nil
}

// bootServerIP is --boot-server-ip, else the DHCP interface's first IPv4 address. It
// also records the boot subnet (full DHCP's pool must lie in it): the prefix of the
// interface address that is the boot server IP, looked up on --dhcp-interface or, without
// it, on every interface.
func (a *Appliance) bootServerIP() (netip.Addr, error) {
	b := a.cfg.Boot
	if b.BootServerIP == "" && b.DHCPInterface == "" {
		return netip.Addr{}, nil
	}
	var ifaces []net.Interface
	if b.DHCPInterface != "" {
		ifc, err := net.InterfaceByName(b.DHCPInterface)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("--dhcp-interface: %w", err)
		}
		ifaces = []net.Interface{*ifc}
	} else if all, err := net.Interfaces(); err == nil {
		ifaces = all
	}
	want, _ := netip.ParseAddr(b.BootServerIP) // validated; invalid when the flag is unset
	for _, ifc := range ifaces {
		addrs, _ := ifc.Addrs()
		for _, ad := range addrs {
			p, err := netip.ParsePrefix(ad.String())
			if err != nil || !p.Addr().Is4() || (want.IsValid() && p.Addr() != want) {
				continue
			}
			a.bootSubnet = p.Masked()
			return p.Addr(), nil
		}
	}
	if want.IsValid() {
		// A boot server address on no local interface (behind NAT, say) still works for
		// proxy DHCP; full DHCP then has no subnet and says so when it starts.
		return want, nil
	}
	return netip.Addr{}, fmt.Errorf("--dhcp-interface %s has no IPv4 address (or pass --boot-server-ip)", b.DHCPInterface)
}

// etcdLeases keeps full-DHCP leases in etcd under the region.
type etcdLeases struct {
	s      *store.Store
	w      *store.LeaseWriter // groups (Apply); nil: through s
	region string
}

func (l *etcdLeases) Leases(ctx context.Context) ([]dhcpd.Lease, error) {
	stored, err := l.s.ListLeases(ctx, l.region)
	if err != nil {
		return nil, err
	}
	out := make([]dhcpd.Lease, 0, len(stored))
	for _, s := range stored {
		ip, err := netip.ParseAddr(s.IP)
		if err != nil {
			continue
		}
		out = append(out, dhcpd.Lease{MAC: s.MAC, IP: ip, Expiry: s.Expiry, Hostname: s.Hostname})
	}
	return out, nil
}

func (l *etcdLeases) Put(ctx context.Context, le dhcpd.Lease) error {
	return l.s.PutLease(ctx, l.region, store.DHCPLease{MAC: le.MAC, IP: le.IP.String(), Expiry: le.Expiry.UTC(), Hostname: le.Hostname})
}

func (l *etcdLeases) Delete(ctx context.Context, ip netip.Addr) error {
	return l.s.DeleteLease(ctx, l.region, ip.String())
}

// Apply stores a group of lease changes in one etcd transaction (more past
// etcd's 128 operations per transaction).
func (l *etcdLeases) Apply(ctx context.Context, puts []dhcpd.Lease, deletes []netip.Addr) error {
	sp := make([]store.DHCPLease, len(puts))
	for i, le := range puts {
		sp[i] = store.DHCPLease{MAC: le.MAC, IP: le.IP.String(), Expiry: le.Expiry.UTC(), Hostname: le.Hostname}
	}
	sd := make([]string, len(deletes))
	for i, ip := range deletes {
		sd[i] = ip.String()
	}
	if l.w != nil {
		return l.w.ApplyLeases(ctx, l.region, sp, sd)
	}
	return l.s.ApplyLeases(ctx, l.region, sp, sd)
}
