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

// fatalAction is what a failed agent does next: a rescue shell only when asked for
// (lpmos.debug=1: a root shell on the console of a machine anyone can PXE-boot is not a
// default), else a reboot after the delay (the appliance decides what boots next:
// nothing is written without a new approval), or a halt when the delay is 0.
func fatalAction(s Settings) (action string, delay time.Duration) {
	switch {
	case s.Debug:
		return "shell", 0
	case s.RebootDelay > 0:
		return "reboot", s.RebootDelay
	}
	return "halt", 0
}

// Fatal says why the agent stopped, on the console, and never returns: as init's child
// a returning agent would drop the machine into init's shell with the reason scrolled
// away. Then it does what fatalAction says.
func Fatal(log *slog.Logger, err error, s Settings) {
	log.Error("agent stopped", "err", err)
	fmt.Fprintf(console, "\n*** LPMOS agent stopped: %v\n", err)
	action, delay := fatalAction(s)
	switch action {
	case "reboot":
		fmt.Fprintf(console, "*** rebooting in %v (%s=; default %v; %s=1 for a rescue shell)\n", delay, ParamRebootDelay, DefaultRebootDelay, ParamDebug)
		time.Sleep(delay)
		Reboot()
	case "halt":
		fmt.Fprintf(console, "*** halted (%s=0): power-cycle the machine\n", ParamRebootDelay)
		waitForever()
	}
	fmt.Fprintf(console, "*** %s=1: rescue shell on the console\n", ParamDebug)
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
