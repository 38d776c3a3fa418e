// Command init is PID 1 of the LPMOS test OS: it prints one marker line on the console
// and powers the machine off. Tests grep the serial log for the line to prove that a
// disk LPMOS wrote really boots. Only syscall is used to keep the initramfs tiny.
package main

import "syscall"

// marker must equal testos.Marker (kept literal here: init is a separate binary and must
// not pull in the testing-oriented package).
const marker = "LPMOS-TESTOS-BOOTED"

func main() {
	// The initramfs carries /dev/console; devtmpfs is the fallback if it is missing.
	con, err := syscall.Open("/dev/console", syscall.O_WRONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		_ = syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
		con, _ = syscall.Open("/dev/console", syscall.O_WRONLY|syscall.O_NOCTTY, 0)
	}
	// proc for the command line, sysfs to tell UEFI from BIOS: both cheap, nothing else.
	_ = syscall.Mount("proc", "/proc", "proc", 0, "")
	_ = syscall.Mount("sysfs", "/sys", "sysfs", 0, "")

	firmware := "bios"
	var st syscall.Stat_t
	if syscall.Stat("/sys/firmware/efi", &st) == nil {
		firmware = "uefi"
	}
	line := marker + " kernel=" + kernelRelease() + " firmware=" + firmware +
		" cmdline=\"" + readSmall("/proc/cmdline") + "\"\n"
	// Leading newline: the kernel's log may end mid-line on the shared console.
	_, _ = syscall.Write(con, []byte("\n"+line))
	syscall.Sync()

	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	// PID 1 must never exit (the kernel would panic); if power-off failed, say so and wait.
	_, _ = syscall.Write(con, []byte("testos: power off failed\n"))
	for {
		_ = syscall.Pause()
	}
}

func kernelRelease() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return "unknown"
	}
	b := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// readSmall returns a small file's content without its trailing newline, or "" on error.
func readSmall(path string) string {
	fd, err := syscall.Open(path, syscall.O_RDONLY, 0)
	if err != nil {
		return ""
	}
	defer syscall.Close(fd)
	buf := make([]byte, 4096)
	n, _ := syscall.Read(fd, buf)
	if n < 0 {
		n = 0
	}
	for n > 0 && (buf[n-1] == '\n' || buf[n-1] == ' ') {
		n--
	}
	return string(buf[:n])
}
