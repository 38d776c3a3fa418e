package appliance_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/store/storetest"
)

// One host opens many half-sent POSTs (once: 21,000 of them exhausted the appliance's
// file descriptors and took its etcd down). Now the connections over the per-source cap
// are closed at once, another host's agent is still served, and etcd is unchanged.
func TestHalfSentPostFloodFromOneSource(t *testing.T) {
	const perSource, flood = 16, 200
	sys := startSystemWith(t, func(c *appliance.Config) { c.MaxConns, c.MaxConnsPerSource = 256, perSource }, "dc1")
	addr := strings.TrimPrefix(sys.regions["dc1"].URL(), "http://")
	before := sys.etcd.Dump(t, "/os/install/")
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	closed := 0
	for i := range flood {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		// Headers promising a body that never comes.
		fmt.Fprintf(c, "POST /api/report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
		held = append(held, c)
	}
	// Every connection past the cap is closed by the appliance: reading it ends at once.
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if err == io.EOF || err != nil && !(errors.As(err, &ne) && ne.Timeout()) { // EOF, or a reset: the unread request was dropped
			closed++
		}
	}
	if want := flood - perSource; closed < want {
		t.Fatalf("%d of %d flood connections closed, want at least %d", closed, flood, want)
	}
	// Another machine on the boot network is served during the flood.
	other := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
	resp, err := other.Post("http://"+addr+"/api/report", "application/json", strings.NewReader(`{"mac_address":"52:54:00:00:40:01","hardware":{}}`))
	if err != nil {
		t.Fatalf("an agent during the flood: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound { // no task: an unmatched report, the normal answer
		t.Fatalf("an agent during the flood: HTTP %d", resp.StatusCode)
	}
	// Tasks unchanged; the only unmatched report is the other agent's.
	storetest.AssertSame(t, before, sys.etcd.Dump(t, "/os/install/"))
	if um := sys.etcd.Dump(t, "/os/unmatched_reports/dc1/"); len(um) != 1 {
		t.Fatalf("unmatched reports after the flood: %v", um)
	}
	t.Logf("%d half-sent POSTs from one source: %d closed at once, %d held (cap %d)", flood, closed, flood-closed, perSource)
}
