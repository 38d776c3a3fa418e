// Package proc runs the helper processes of the project's tests and lab (QEMU, dnsmasq,
// the project's binaries, stock clients), on the host or inside a network namespace.
// It keeps each process's output (in memory, and in a log file when asked), waits for
// lines in that output or in a file another program writes (a serial console), and ends
// processes by PID. It imports nothing of the project.
package proc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options say where a process runs and where its output goes.
type Options struct {
	// NetNS runs the process inside this network namespace through `ip netns exec`,
	// which execs it: the PID is the command's own, so ending it by PID ends it.
	NetNS string
	// Log is a file the output (stdout and stderr) is appended to, besides memory.
	Log string
}

// Proc is a started process.
type Proc struct {
	Name    string
	LogPath string // Options.Log
	Cmd     *exec.Cmd

	done chan struct{}
	err  error

	mu      sync.Mutex
	out     []byte
	changed chan struct{} // closed (and replaced) on every write
	cursor  int           // where NextLine continues
}

// Start runs argv. The process gets SIGKILL if the starting thread dies (a test binary
// killed mid-run leaves no QEMU behind).
func Start(name string, argv []string, o Options) (*Proc, error) {
	if o.NetNS != "" {
		argv = append([]string{"ip", "netns", "exec", o.NetNS}, argv...)
	}
	p := &Proc{Name: name, LogPath: o.Log, done: make(chan struct{}), changed: make(chan struct{})}
	var w io.Writer = p
	var f *os.File
	if o.Log != "" {
		var err error
		if f, err = os.OpenFile(o.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			return nil, err
		}
		w = io.MultiWriter(f, p)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = w, w
	// A grandchild holding the output pipe must not keep Wait (and Done) from returning.
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		if f != nil {
			f.Close()
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.Cmd = cmd
	go func() {
		p.err = cmd.Wait()
		if f != nil {
			f.Close()
		}
		close(p.done)
	}()
	return p, nil
}

// Write collects output and wakes the waiters.
func (p *Proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out = append(p.out, b...)
	close(p.changed)
	p.changed = make(chan struct{})
	return len(b), nil
}

// Pid is the process's ID.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited (and its output is collected).
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the exit error, valid after Done.
func (p *Proc) Err() error { return p.err }

// Log returns what the process has printed so far.
func (p *Proc) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return string(p.out)
}

// Stop ends the process by PID: SIGTERM, then SIGKILL after grace. It returns once the
// process has exited.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// Kill ends the process by PID with SIGKILL and returns once it has exited.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill() // harmless when it already exited
	<-p.done
}

// NextLine waits for the next complete output line containing want, after the line the
// previous NextLine returned, and returns it. It fails when ctx ends or the process
// exits first.
func (p *Proc) NextLine(ctx context.Context, want string) (string, error) {
	for {
		p.mu.Lock()
		for {
			end := bytes.IndexByte(p.out[p.cursor:], '\n')
			if end < 0 {
				break
			}
			line := strings.TrimRight(string(p.out[p.cursor:p.cursor+end]), "\r")
			p.cursor += end + 1
			if strings.Contains(line, want) {
				p.mu.Unlock()
				return line, nil
			}
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.done:
			// Collected output is complete once done is closed: one last look.
			select {
			case <-changed:
				continue
			default:
			}
			return "", fmt.Errorf("%s exited (%v) before a line with %q", p.Name, p.err, want)
		case <-ctx.Done():
			return "", fmt.Errorf("%s: no line with %q: %w", p.Name, want, ctx.Err())
		}
	}
}

// FilePoll is how often WaitFileLine reads the file again.
const FilePoll = 200 * time.Millisecond

// WaitFileLine waits until the file at path, written by another program (QEMU's serial
// console), holds a complete line containing want, and returns it from want to the
// line's end. It fails when ctx ends, or when exited (if not nil) is closed and a last
// read still lacks the line; that last read also accepts an unterminated final line.
func WaitFileLine(ctx context.Context, path, want string, exited <-chan struct{}) (string, error) {
	tick := time.NewTicker(FilePoll)
	defer tick.Stop()
	for {
		if line, ok := FileLine(path, want, false); ok {
			return line, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no line with %q in %s: %w", want, path, ctx.Err())
		case <-exited:
			if line, ok := FileLine(path, want, true); ok {
				return line, nil
			}
			return "", fmt.Errorf("the writer exited without a line with %q in %s", want, path)
		case <-tick.C:
		}
	}
}

// FileLine returns the first line of the file containing want, from want to the line's
// end. A final line without its line end counts only when partial is set (the writer
// has exited).
func FileLine(path, want string, partial bool) (string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	i := bytes.Index(b, []byte(want))
	if i < 0 {
		return "", false
	}
	end := bytes.IndexByte(b[i:], '\n')
	if end < 0 {
		if !partial {
			return "", false // still being written
		}
		end = len(b) - i
	}
	return strings.TrimRight(string(b[i:i+end]), "\r"), true
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
