// Package connlimit caps the connections a TCP listener holds: in all, and per source
// address. A connection over a cap is closed as soon as it is accepted, so one host on
// the boot network cannot hold every file descriptor of the appliance (a flood of
// half-sent requests once exhausted them and took etcd down with it).
package connlimit

import (
	"net"
	"sync"
)

// Listener wraps a net.Listener with the caps. Zero means no cap.
type Listener struct {
	net.Listener
	Total, PerSource int
	// Refused, if set, is called (without locks held) for each connection closed for
	// being over a cap, with the source and which cap.
	Refused func(source string, perSource bool)

	mu     sync.Mutex
	open   int
	source map[string]int
}

// New wraps ln.
func New(ln net.Listener, total, perSource int) *Listener {
	return &Listener{Listener: ln, Total: total, PerSource: perSource, source: map[string]int{}}
}

// Accept returns the next connection within the caps; connections over a cap are
// closed and not returned.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceOf(c.RemoteAddr())
		l.mu.Lock()
		overTotal := l.Total > 0 && l.open >= l.Total
		overSource := l.PerSource > 0 && l.source[src] >= l.PerSource
		if !overTotal && !overSource {
			l.open++
			l.source[src]++
			l.mu.Unlock()
			return &conn{Conn: c, l: l, src: src}, nil
		}
		l.mu.Unlock()
		c.Close()
		if l.Refused != nil {
			l.Refused(src, overSource)
		}
	}
}

// Open reports how many connections are held in all and from source.
func (l *Listener) Open(source string) (total, fromSource int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.source[source]
}

func (l *Listener) release(src string) {
	l.mu.Lock()
	l.open--
	if l.source[src]--; l.source[src] <= 0 {
		delete(l.source, src)
	}
	l.mu.Unlock()
}

type conn struct {
	net.Conn
	l    *Listener
	src  string
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}

func sourceOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
