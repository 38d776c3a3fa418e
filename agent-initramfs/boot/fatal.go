package boot

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"
)

// console is where Fatal writes its banner: u-root's init gives uinit the console as
// stderr.
var console = os.Stderr

// rescueShell is u-root's default shell link.
const rescueShell = "/bin/defaultsh"

// Fatal says why the agent stopped, on the console, and never returns: as init's child
// a returning agent would drop the machine into init's shell with the reason scrolled
// away. With delay > 0 it reboots after delay (the appliance decides what boots next);
// otherwise it offers a rescue shell on the console and waits for an operator.
func Fatal(log *slog.Logger, err error, delay time.Duration) {
	log.Error("agent stopped", "err", err)
	fmt.Fprintf(console, "\n*** LPMOS agent stopped: %v\n", err)
	if delay > 0 {
		fmt.Fprintf(console, "*** rebooting in %v (lpmos.reboot_delay)\n", delay)
		time.Sleep(delay)
		Reboot()
	}
	fmt.Fprintf(console, "*** waiting for an operator; set lpmos.reboot_delay= to reboot instead\n")
	for {
		start := time.Now()
		cmd := exec.Command(rescueShell)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, console, console
		_ = cmd.Run()
		if time.Since(start) < 5*time.Second {
			break // no shell, or stdin at EOF: do not spin
		}
		fmt.Fprintf(console, "\n*** LPMOS agent stopped: %v\n", err)
	}
	waitForever()
}

// waitForever blocks without tripping the runtime's deadlock detector (a bare select{}
// in the last goroutine panics, which would hand control back to init).
func waitForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// Reboot syncs and restarts the machine. It never returns; if reboot(2) fails it
// waits forever rather than hand control back to init.
func Reboot() {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		fmt.Fprintf(console, "*** reboot failed: %v; power-cycle the machine\n", err)
	}
	waitForever()
}
