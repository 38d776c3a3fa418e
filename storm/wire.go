package storm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// The two UDP stages, each from the machine's own source address: a PXE-style
// DHCPREQUEST to the proxy-DHCP port (4011), and a TFTP read of the first stage. The
// project's TFTP library (pin/tftp) binds its client to 0.0.0.0, so every machine would
// share 127.0.0.1 and meet the server's per-client cap; this small client binds.

// retransmit is the wait for an answer before a datagram is sent again, and tries the
// number of sends: firmware waits seconds, a loaded loopback answers in milliseconds.
const (
	retransmit = time.Second
	tries      = 5
)

// errRetransmits: no answer after every try (a transient error: the stage is retried).
var errRetransmits = errors.New("no answer")

// dhcpAsk sends a DHCPREQUEST with PXE's options (BIOS, option 93 = 0) from src to
// server, as the firmware (ipxe false) or iPXE (user class "iPXE") would on port 4011,
// and returns the ACK's boot file.
func dhcpAsk(ctx context.Context, src netip.Addr, server string, mac net.HardwareAddr, ipxe bool) (string, error) {
	raddr, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		return "", err
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: src.AsSlice()})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	guid := append([]byte{0}, bytes.Repeat([]byte{mac[5]}, 16)...)
	mods := []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(src.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, guid),
	}
	if ipxe {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")))
	}
	req, err := dhcpv4.New(mods...)
	if err != nil {
		return "", err
	}
	out, buf := req.ToBytes(), make([]byte, 1500)
	for range tries {
		if _, err := conn.WriteTo(out, raddr); err != nil {
			return "", err
		}
		deadline := time.Now().Add(retransmit)
		for {
			if err := ctx.Err(); err != nil {
				return "", err
			}
			conn.SetReadDeadline(deadline)
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					break
				}
				return "", err
			}
			rep, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || rep.TransactionID != req.TransactionID || rep.OpCode != dhcpv4.OpcodeBootReply {
				continue // not ours
			}
			if rep.MessageType() != dhcpv4.MessageTypeAck {
				return "", fmt.Errorf("DHCP answer %s, want ACK", rep.MessageType())
			}
			file := rep.BootFileName
			if b := rep.GetOneOption(dhcpv4.OptionBootfileName); len(b) > 0 {
				file = string(b)
			}
			return file, nil
		}
	}
	return "", fmt.Errorf("DHCP to %s: %w", server, errRetransmits)
}

// tftpError is the server's ERROR packet (over its caps, not found).
type tftpError struct {
	code uint16
	msg  string
}

func (e *tftpError) Error() string { return fmt.Sprintf("TFTP error %d: %s", e.code, e.msg) }

// tftpGet reads file from server (RFC 1350, with RFC 2348 blksize and RFC 2349 tsize)
// from src, discarding the bytes, and returns their count.
func tftpGet(ctx context.Context, src netip.Addr, server, file string, blksize int) (int64, error) {
	raddr, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		return 0, err
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: src.AsSlice()})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	rrq := binary.BigEndian.AppendUint16(nil, 1)
	for _, s := range []string{file, "octet", "blksize", strconv.Itoa(blksize), "tsize", "0"} {
		rrq = append(append(rrq, s...), 0)
	}
	last, peer := rrq, (*net.UDPAddr)(nil) // the packet resent on a timeout; the server's transfer address
	size, tsize, want, got := 512, int64(-1), uint16(1), int64(0)
	ack := func(block uint16) []byte { return binary.BigEndian.AppendUint16([]byte{0, 4}, block) }
	buf := make([]byte, 65536)
	sent := 0
	for {
		to := raddr
		if peer != nil {
			to = peer
		}
		if _, err := conn.WriteTo(last, to); err != nil {
			return got, err
		}
		if sent++; sent > tries {
			return got, fmt.Errorf("TFTP %s: %w", file, errRetransmits)
		}
		deadline := time.Now().Add(retransmit)
	read:
		for {
			if err := ctx.Err(); err != nil {
				return got, err
			}
			conn.SetReadDeadline(deadline)
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					break read // resend last
				}
				return got, err
			}
			if n < 4 || !from.IP.Equal(raddr.IP) || peer != nil && from.Port != peer.Port {
				continue
			}
			p := buf[:n]
			op, arg := binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])
			switch {
			case op == 5:
				return got, &tftpError{code: arg, msg: strings.TrimRight(string(p[4:]), "\x00")}
			case op == 6 && peer == nil: // OACK: the options taken
				peer = from
				f := strings.Split(strings.TrimRight(string(p[2:]), "\x00"), "\x00")
				for i := 0; i+1 < len(f); i += 2 {
					v, _ := strconv.Atoi(f[i+1])
					switch strings.ToLower(f[i]) {
					case "blksize":
						size = v
					case "tsize":
						tsize = int64(v)
					}
				}
				last, sent = ack(0), 0
				break read
			case op == 3 && arg == want:
				if peer == nil {
					peer = from // no OACK: 512-byte blocks
				}
				got += int64(n - 4)
				last, sent = ack(arg), 0
				want++
				if n-4 < size {
					conn.WriteTo(last, peer) // the final ACK; a lost one makes the server resend, then give up
					if tsize >= 0 && got != tsize {
						return got, fmt.Errorf("TFTP %s: %d bytes, tsize said %d", file, got, tsize)
					}
					return got, nil
				}
				break read
			case op == 3: // a duplicate: our ACK was lost, ACK again
				conn.WriteTo(ack(arg), from)
			}
		}
	}
}
