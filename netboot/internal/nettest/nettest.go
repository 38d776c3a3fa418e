// Package nettest builds throw-away network namespaces for netboot's tests:
// real DHCP/TFTP clients and servers talk over veth pairs and bridges that
// exist only inside namespaces the test created, and are removed after it.
package nettest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Require skips t unless it runs as root with the ip command and every
// named binary present.
func Require(t testing.TB, bins ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root to create network namespaces (run go test as root)")
	}
	for _, b := range append([]string{"ip"}, bins...) {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("SKIP: %s not installed (see .ci/packages.txt)", b)
		}
	}
}

var seq atomic.Int32

// Run runs a command and fails t with its output on error.
func Run(t testing.TB, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// NS creates a namespace named lpm-nb-<pid>-<n>-<tag> with lo up, deleted
// when t ends.
func NS(t testing.TB, tag string) string {
	t.Helper()
	name := fmt.Sprintf("lpm-nb-%d-%d-%s", os.Getpid(), seq.Add(1), tag)
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// Link connects namespace a (interface ifA, address addrA in CIDR form or
// "") to namespace b (ifB, addrB) with a veth pair, both ends up.
func Link(t testing.TB, a, ifA, addrA, b, ifB, addrB string) {
	t.Helper()
	Run(t, "ip", "-n", a, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b)
	for _, e := range []struct{ ns, ifname, addr string }{{a, ifA, addrA}, {b, ifB, addrB}} {
		if e.addr != "" {
			Run(t, "ip", "-n", e.ns, "addr", "add", e.addr, "dev", e.ifname)
		}
		Run(t, "ip", "-n", e.ns, "link", "set", e.ifname, "up")
	}
}

// Do runs f with the calling goroutine's thread inside namespace ns.
// Sockets opened in f stay in ns after Do returns.
func Do(ns string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is in the wrong namespace: never unlock it, so the
		// runtime retires it with the goroutine.
		runtime.LockOSThread()
		return fmt.Errorf("setns back: %w", err)
	}
	return ferr
}

// Proc is a process started in a namespace, killed by PID when the test
// ends. Lines carries its stdout+stderr line by line.
type Proc struct {
	Cmd   *exec.Cmd
	Lines chan string
	log   strings.Builder
}

// Start runs argv inside ns (ip netns exec execs it, so the PID is the
// command's own).
func Start(t testing.TB, ns string, argv ...string) *Proc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", argv, err)
	}
	p := &Proc{Cmd: cmd, Lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case p.Lines <- sc.Text():
			default: // nobody listening: drop, the process must not block
			}
		}
		close(p.Lines)
	}()
	exited := make(chan struct{})
	go func() { cmd.Wait(); pw.Close(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	return p
}

// Expect waits for a line containing want, returning it; it fails t when
// the process ends or the timeout passes first. Seen lines are logged.
func (p *Proc) Expect(t testing.TB, want string, timeout time.Duration) string {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-p.Lines:
			if !ok {
				t.Fatalf("process exited before %q; output:\n%s", want, p.log.String())
			}
			p.log.WriteString(l + "\n")
			if strings.Contains(l, want) {
				return l
			}
		case <-timer.C:
			t.Fatalf("no %q within %v; output:\n%s", want, timeout, p.log.String())
		}
	}
}
