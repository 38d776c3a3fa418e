package dhcpd

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"
)

// udpConn reads and writes DHCP datagrams on one UDP socket with recvmsg and
// sendmsg issued directly, as raw system calls on the non-blocking socket (they
// never block: EAGAIN hands the wait back to the runtime's poller). Measured
// under perfdhcp, most of the server's CPU went not into DHCP but into the
// runtime around each packet: every system call made through the runtime
// wakes its sysmon thread from its idle sleep (several context switches a
// packet at a few thousand packets per second), and golang.org/x/net/ipv4
// allocates the control message and its buffers per packet. Only reads use
// the fixed buffers below, so a conn has a single reader; writes may come from
// any goroutine.
type udpConn struct {
	pc net.PacketConn
	rc syscall.RawConn

	// Reader state, reused for every datagram (one reader).
	rmsg  syscall.Msghdr
	riov  syscall.Iovec
	rsa   syscall.RawSockaddrInet4
	roob  [16]uint64 // control messages; uint64 for the cmsghdr's alignment
	rn    int
	rerr  syscall.Errno
	rfunc func(fd uintptr) bool

	wmu   sync.Mutex // writer state below
	wmsg  syscall.Msghdr
	wiov  syscall.Iovec
	wsa   syscall.RawSockaddrInet4
	woob  [8]uint64
	werr  syscall.Errno
	wfunc func(fd uintptr) bool
}

// packetInfo is where a datagram came from and how it arrived (IP_PKTINFO).
type packetInfo struct {
	src     netip.AddrPort
	ifIndex int        // receiving interface; 0: unknown
	dst     netip.Addr // the datagram's destination: broadcast or ours
}

func newUDPConn(pc net.PacketConn) (*udpConn, error) {
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("dhcpd: %T is not a UDP socket", pc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("dhcpd: socket: %w", err)
	}
	// Listen enables IP_PKTINFO already; a socket from elsewhere gets it here.
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_PKTINFO, 1)
	}); err != nil || serr != nil {
		return nil, fmt.Errorf("dhcpd: enable IP_PKTINFO: %w", errors.Join(err, serr))
	}
	u := &udpConn{pc: pc, rc: rc}
	u.rmsg.Name = (*byte)(unsafe.Pointer(&u.rsa))
	u.rmsg.Iov = &u.riov
	u.rmsg.Iovlen = 1
	u.rfunc = u.recv
	u.wmsg.Name = (*byte)(unsafe.Pointer(&u.wsa))
	u.wmsg.Namelen = syscall.SizeofSockaddrInet4
	u.wmsg.Iov = &u.wiov
	u.wmsg.Iovlen = 1
	u.wfunc = u.send
	return u, nil
}

// read receives one datagram into b (truncated to len(b)).
func (u *udpConn) read(b []byte) (int, packetInfo, error) {
	u.riov.Base = &b[0]
	u.riov.SetLen(len(b))
	u.rmsg.Namelen = syscall.SizeofSockaddrInet4
	u.rmsg.Control = (*byte)(unsafe.Pointer(&u.roob[0]))
	u.rmsg.SetControllen(int(unsafe.Sizeof(u.roob)))
	u.rmsg.Flags = 0
	if err := u.rc.Read(u.rfunc); err != nil {
		return 0, packetInfo{}, err
	}
	if u.rerr != 0 {
		return 0, packetInfo{}, fmt.Errorf("recvmsg: %w", u.rerr)
	}
	port := (*[2]byte)(unsafe.Pointer(&u.rsa.Port))
	pi := packetInfo{src: netip.AddrPortFrom(netip.AddrFrom4(u.rsa.Addr), uint16(port[0])<<8|uint16(port[1]))}
	oob := unsafe.Slice((*byte)(unsafe.Pointer(&u.roob[0])), int(u.rmsg.Controllen))
	for len(oob) >= syscall.SizeofCmsghdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		if h.Len < syscall.SizeofCmsghdr || int(h.Len) > len(oob) {
			break
		}
		if h.Level == syscall.IPPROTO_IP && h.Type == syscall.IP_PKTINFO && int(h.Len) >= syscall.CmsgLen(syscall.SizeofInet4Pktinfo) {
			info := (*syscall.Inet4Pktinfo)(unsafe.Pointer(&oob[syscall.CmsgLen(0)]))
			pi.ifIndex, pi.dst = int(info.Ifindex), netip.AddrFrom4(info.Addr)
		}
		next := syscall.CmsgSpace(int(h.Len) - syscall.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return u.rn, pi, nil
}

// recv is the raw recvmsg; false: nothing queued, wait for the poller.
func (u *udpConn) recv(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&u.rmsg)), 0)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		u.rn, u.rerr = int(n), e
		return true
	}
}

// write sends b to dst out of interface ifIndex (0: as routed).
func (u *udpConn) write(b []byte, dst netip.AddrPort, ifIndex int) error {
	if !dst.Addr().Is4() {
		return fmt.Errorf("dhcpd: %v is not an IPv4 destination", dst)
	}
	u.wmu.Lock()
	defer u.wmu.Unlock()
	u.wsa = syscall.RawSockaddrInet4{Family: syscall.AF_INET, Addr: dst.Addr().As4()}
	port := (*[2]byte)(unsafe.Pointer(&u.wsa.Port))
	port[0], port[1] = byte(dst.Port()>>8), byte(dst.Port())
	u.wiov.Base = unsafe.SliceData(b)
	u.wiov.SetLen(len(b))
	u.wmsg.Control, u.wmsg.Controllen = nil, 0
	if ifIndex != 0 {
		// IP_PKTINFO with only the interface: the reply leaves where the
		// request came in (a broadcast has no route to pick one).
		oob := unsafe.Slice((*byte)(unsafe.Pointer(&u.woob[0])), syscall.CmsgSpace(syscall.SizeofInet4Pktinfo))
		clear(oob)
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		h.Level, h.Type = syscall.IPPROTO_IP, syscall.IP_PKTINFO
		h.SetLen(syscall.CmsgLen(syscall.SizeofInet4Pktinfo))
		(*syscall.Inet4Pktinfo)(unsafe.Pointer(&oob[syscall.CmsgLen(0)])).Ifindex = int32(ifIndex)
		u.wmsg.Control = &oob[0]
		u.wmsg.SetControllen(len(oob))
	}
	if err := u.rc.Write(u.wfunc); err != nil {
		return err
	}
	if u.werr != 0 {
		return fmt.Errorf("sendmsg to %v: %w", dst, u.werr)
	}
	return nil
}

// send is the raw sendmsg; false: the socket buffer is full, wait for the poller.
func (u *udpConn) send(fd uintptr) bool {
	for {
		_, _, e := syscall.RawSyscall(syscall.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&u.wmsg)), 0)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		u.werr = e
		return true
	}
}
