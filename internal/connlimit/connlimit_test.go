package connlimit

import (
	"io"
	"net"
	"testing"
	"time"
)

// One source is held to PerSource connections; another source is still served; a
// closed connection frees its place.
func TestPerSourceAndTotal(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan string, 16)
	l := New(inner, 4, 2)
	l.Refused = func(src string, _ bool) { refused <- src }
	defer l.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	wait := func() net.Conn {
		select {
		case c := <-accepted:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("not accepted")
			return nil
		}
	}
	a1, a2 := dial("127.0.0.1"), dial("127.0.0.1")
	s1, _ := wait(), wait()
	over := dial("127.0.0.1") // a third from the same source: closed at once
	select {
	case src := <-refused:
		if src != "127.0.0.1" {
			t.Fatalf("refused %s", src)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the third connection of one source was not refused")
	}
	over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := over.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("refused connection read: %v, want EOF", err)
	}
	b1 := dial("127.0.0.2") // another source is served
	wait()
	if total, from := l.Open("127.0.0.1"); total != 3 || from != 2 {
		t.Fatalf("open = %d total, %d from 127.0.0.1", total, from)
	}
	s1.Close() // a place frees up
	a3 := dial("127.0.0.1")
	wait()
	for _, c := range []net.Conn{a1, a2, a3, b1} {
		c.Close()
	}
}
