// Package tftpd serves the iPXE first stage over TFTP (RFC 1350), read-only,
// from an fs.FS. Options: blksize (RFC 2348) and tsize (RFC 2349) are
// negotiated; windowsize (RFC 7440) is not implemented by pin/tftp v3.1.0,
// so it is left out of the OACK and the client falls back to lock-step, as
// RFC 2347 allows for any option a server does not support.
package tftpd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pin/tftp/v3"

	"golang.org/x/net/ipv4"

	"lpmos.dev/lpmos/netboot"
)

// Config configures a Server.
type Config struct {
	// Files are served by name, flat (ipxe.Binaries() or ipxe.BinariesDir).
	Files  fs.FS
	Logger *slog.Logger
	// Timeout per retransmission; zero: 2 s. Retries; zero: 5.
	Timeout time.Duration
	Retries int
	// MaxTransfers caps transfers running at once (each holds a socket until it ends
	// or times out); zero: 512. MaxPerSource caps those of one client address (a
	// machine needs one; a client retransmitting its request may hold a few); zero: 8.
	// A request over a cap gets a TFTP error at once: the firmware retries later.
	MaxTransfers, MaxPerSource int
	// Observe, if set, is told how every read request ended and the bytes it sent
	// (the appliance counts them for Prometheus; netboot knows nothing of metrics).
	Observe func(outcome Outcome, bytes int64)
}

// Outcome is how a read request ended.
type Outcome string

const (
	OutcomeDone     Outcome = "done"      // the file was sent
	OutcomeFailed   Outcome = "failed"    // the transfer broke off (timeout, client error)
	OutcomeRefused  Outcome = "refused"   // over the transfer caps
	OutcomeNotFound Outcome = "not_found" // no such file, or a name that is not allowed
)

// Server is a read-only TFTP server; run it with Serve.
type Server struct {
	cfg Config
	log *slog.Logger
	srv *tftp.Server

	mu       sync.Mutex
	running  int
	bySource map[string]int
	refused  time.Time // when a refusal over a cap was last logged
	counts   Counts
}

// Counts are the read requests a Server admitted and refused over its caps.
type Counts struct{ Admitted, Refused int }

// ErrRefused is the error a refused request gets (sent to the client as a
// TFTP error).
var ErrRefused = errors.New("tftpd: refused")

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Files == nil {
		return nil, errors.New("tftpd: config needs Files")
	}
	if cfg.MaxTransfers == 0 {
		cfg.MaxTransfers = 512
	}
	if cfg.MaxPerSource == 0 {
		cfg.MaxPerSource = 8
	}
	s := &Server{cfg: cfg, log: cfg.Logger, bySource: map[string]int{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	// A nil write handler makes pin/tftp answer every WRQ with an error.
	s.srv = tftp.NewServer(s.read, nil)
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Retries == 0 {
		cfg.Retries = 5
	}
	s.srv.SetTimeout(cfg.Timeout)
	s.srv.SetRetries(cfg.Retries)
	return s, nil
}

// Listen opens the TFTP socket (":69") with IP_PKTINFO already on:
// pin/tftp learns the interface MTU from it to allow large blksize, and a
// request queued before the option is set would arrive without it and be
// capped at 512-byte blocks.
func Listen(ctx context.Context, addr string) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		return c.Control(netboot.SizeReceiveBuffer)
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("tftpd: listen %s: %w", addr, err)
	}
	if err := ipv4.NewPacketConn(pc).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true); err != nil {
		pc.Close()
		return nil, fmt.Errorf("tftpd: enable IP_PKTINFO: %w", err)
	}
	return pc, nil
}

// Serve answers on conn (from Listen) until ctx ends, then waits for
// running transfers to stop.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			s.srv.Shutdown() // closes conn and waits for transfers
		case <-done:
		}
	}()
	s.log.Info("TFTP server started", "addr", conn.LocalAddr().String())
	err := s.srv.Serve(conn)
	close(done)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tftpd: serve: %w", err)
	}
	return nil
}

// clean refuses any name that could leave the flat set of served files:
// absolute paths, dot-dot, any separator (Files is one directory).
func clean(name string) (string, error) {
	if strings.HasPrefix(name, "/") || strings.HasPrefix(name, `\`) {
		return "", fmt.Errorf("%w: absolute path %q", ErrRefused, name)
	}
	if strings.Contains(name, "..") {
		return "", fmt.Errorf("%w: parent directory in %q", ErrRefused, name)
	}
	if name == "" || strings.ContainsAny(name, `/\`) || !fs.ValidPath(name) {
		return "", fmt.Errorf("%w: bad file name %q", ErrRefused, name)
	}
	return name, nil
}

func (s *Server) read(filename string, rf io.ReaderFrom) error {
	outcome, n, err := s.send(filename, rf)
	if s.cfg.Observe != nil {
		s.cfg.Observe(outcome, n)
	}
	return err
}

func (s *Server) send(filename string, rf io.ReaderFrom) (Outcome, int64, error) {
	start := time.Now()
	client := ""
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ra := ot.RemoteAddr()
		client = ra.String()
	}
	log := s.log.With("client", client, "file", filename)
	source, _, _ := net.SplitHostPort(client)
	if !s.admit(source) {
		return OutcomeRefused, 0, fmt.Errorf("%w: server busy, retry later", ErrRefused)
	}
	defer s.release(source)
	name, err := clean(filename)
	if err != nil {
		log.Warn("TFTP: request refused", "err", err)
		return OutcomeNotFound, 0, err
	}
	f, err := s.cfg.Files.Open(name)
	if err != nil {
		if name == netboot.LocalDiskFile {
			log.Info("TFTP: installed machine sent on to its disk (this file is refused on purpose)")
		} else {
			log.Warn("TFTP: unknown file", "err", err)
		}
		return OutcomeNotFound, 0, fmt.Errorf("%w: no such file %q", ErrRefused, name)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		log.Warn("TFTP: not a regular file")
		return OutcomeNotFound, 0, fmt.Errorf("%w: no such file %q", ErrRefused, name)
	}
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ot.SetSize(st.Size()) // RFC 2349 tsize in the OACK
	}
	// pin/tftp reads one block at a time: buffer so a 512-byte block is
	// not a read(2) of its own.
	n, err := rf.ReadFrom(bufio.NewReaderSize(f, 64<<10))
	d := time.Since(start)
	if err != nil {
		log.Warn("TFTP: transfer failed", "bytes", n, "duration", d.Round(time.Millisecond), "err", err)
		return OutcomeFailed, n, fmt.Errorf("tftpd: send %s: %w", name, err)
	}
	log.Info("TFTP: transfer done", "bytes", n, "duration", d.Round(time.Millisecond))
	return OutcomeDone, n, nil
}

// admit counts a transfer in if it fits the caps; a refusal is logged at most once a
// second (a flood must not flood the log).
func (s *Server) admit(source string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running >= s.cfg.MaxTransfers || s.bySource[source] >= s.cfg.MaxPerSource {
		if now := time.Now(); now.Sub(s.refused) >= time.Second {
			s.refused = now
			s.log.Warn("TFTP: request refused: over the transfer caps (logged once a second)", "client", source,
				"running", s.running, "from_client", s.bySource[source], "max", s.cfg.MaxTransfers, "max_per_client", s.cfg.MaxPerSource)
		}
		s.counts.Refused++
		return false
	}
	s.counts.Admitted++
	s.running++
	s.bySource[source]++
	return true
}

func (s *Server) release(source string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	if s.bySource[source]--; s.bySource[source] <= 0 {
		delete(s.bySource, source)
	}
}

// Counted is what the caps decided so far.
func (s *Server) Counted() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts
}

// Running reports the transfers in progress, in all and from source.
func (s *Server) Running(source string) (total, fromSource int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running, s.bySource[source]
}
