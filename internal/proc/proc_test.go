package proc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The serial-console wait: a line counts once complete, and a writer that exits
// without it ends the wait at once, not at the deadline.
func TestWaitFileLine(t *testing.T) {
	const marker = "LPMOS-TESTOS-BOOTED"
	dir := t.TempDir()
	log := filepath.Join(dir, "serial.log")
	exited := make(chan struct{})

	if err := os.WriteFile(log, []byte("kernel noise\r\n"+marker+" kernel=6.1 firmware=bios"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := FileLine(log, marker, false); ok {
		t.Fatal("partial line accepted")
	}
	go func() {
		f, _ := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
		_, _ = f.WriteString(" cmdline=\"x\"\r\n[ 1.0] reboot: Power down\r\n")
		_ = f.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	line, err := WaitFileLine(ctx, log, marker, exited)
	if err != nil {
		t.Fatal(err)
	}
	if want := marker + " kernel=6.1 firmware=bios cmdline=\"x\""; line != want {
		t.Fatalf("line = %q, want %q", line, want)
	}

	empty := filepath.Join(dir, "empty.log")
	close(exited)
	if _, err := WaitFileLine(ctx, empty, marker, exited); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("err = %v, want exited", err)
	}
	// After the writer exited, an unterminated last line counts.
	os.WriteFile(empty, []byte("x\n"+marker+" end"), 0o644)
	if line, err := WaitFileLine(ctx, empty, marker, exited); err != nil || line != marker+" end" {
		t.Fatalf("line %q, err %v", line, err)
	}
}

// NextLine continues after the previous match, sees output written before it was
// called, and fails at once when the process exits without the line.
func TestNextLine(t *testing.T) {
	p, err := Start("sh", []string{"sh", "-c", "echo one; echo lease 1; echo lease 2; echo last"}, Options{Log: filepath.Join(t.TempDir(), "sh.log")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, want := range []string{"lease 1", "lease 2"} {
		if l, err := p.NextLine(ctx, "lease"); err != nil || l != want {
			t.Fatalf("NextLine = %q, %v; want %q", l, err, want)
		}
	}
	if _, err := p.NextLine(ctx, "lease"); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("third lease: err = %v, want exited", err)
	}
	b, _ := os.ReadFile(p.LogPath)
	if string(b) != p.Log() || !strings.HasSuffix(p.Log(), "last\n") {
		t.Fatalf("log file %q, memory %q", b, p.Log())
	}
	if Tail("a\nb\nc\n", 2) != "b\nc" {
		t.Fatal("Tail")
	}
}

// Stop ends a process by SIGTERM, and one that ignores SIGTERM (inherited across exec) by
// SIGKILL after the grace time.
func TestStop(t *testing.T) {
	for _, script := range []string{"exec sleep 60", "trap '' TERM; echo ready; exec sleep 60"} {
		p, err := Start("sleep", []string{"sh", "-c", script}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(script, "ready") {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if _, err := p.NextLine(ctx, "ready"); err != nil {
				t.Fatal(err)
			}
			cancel()
		}
		start := time.Now()
		p.Stop(500 * time.Millisecond)
		select {
		case <-p.Done():
		default:
			t.Fatalf("%q: still running after Stop", script)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%q: Stop took %v", script, time.Since(start))
		}
	}
}
