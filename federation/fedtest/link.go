// Package fedtest helps tests of the federation (docs/federation.md): a TCP link
// between the control plane and a region's etcd that a test cuts and restores, as a
// WAN link goes down and comes back, while the region's own clients keep using
// their etcd directly.
package fedtest

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Link forwards connections from a loopback address to target until cut.
type Link struct {
	addr, target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewLink listens on 127.0.0.1:0 and forwards to target (host:port); it is closed in
// t.Cleanup.
func NewLink(t testing.TB, target string) *Link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	l.serve(ln)
	t.Cleanup(func() { l.Cut(); l.wg.Wait() })
	return l
}

// Addr is the link's near end (host:port), what the control plane dials.
func (l *Link) Addr() string { return l.addr }

// Endpoint is Addr as an etcd endpoint URL.
func (l *Link) Endpoint() string { return "http://" + l.addr }

func (l *Link) serve(ln net.Listener) {
	l.mu.Lock()
	l.ln = ln
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.wg.Add(1)
			go func() { defer l.wg.Done(); l.forward(c) }()
		}
	}()
}

func (l *Link) forward(c net.Conn) {
	u, err := net.DialTimeout("tcp", l.target, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	l.mu.Lock()
	if l.ln == nil { // cut meanwhile
		l.mu.Unlock()
		c.Close()
		u.Close()
		return
	}
	l.conns[c], l.conns[u] = struct{}{}, struct{}{}
	l.mu.Unlock()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) { io.Copy(dst, src); dst.Close(); src.Close(); done <- struct{}{} }
	go pipe(u, c)
	go pipe(c, u)
	<-done
	<-done
	l.mu.Lock()
	delete(l.conns, c)
	delete(l.conns, u)
	l.mu.Unlock()
}

// Cut closes the near end and every forwarded connection: the far side is
// unreachable (connection refused) until Restore.
func (l *Link) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		l.ln.Close()
		l.ln = nil
	}
	for c := range l.conns {
		c.Close()
	}
}

// Restore listens again on the same address.
func (l *Link) Restore(t testing.TB) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port was ours a moment ago; retry briefly if the kernel lags
		if ln, err = net.Listen("tcp", l.addr); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restore link %s: %v", l.addr, err)
	}
	l.serve(ln)
}
