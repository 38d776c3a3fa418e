package images

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

func openDirect(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
}

func dropCache(f *os.File, off, n int64) error {
	return unix.Fadvise(int(f.Fd()), off, n, unix.FADV_DONTNEED)
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func addrAligned(p []byte) bool { return uintptrOf(p)%directAlign == 0 }

// lockDir takes an exclusive lock on dir's hidden lock file, so two
// `lpmos-image add` runs do not lose each other's entries.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(dir+"/.catalog.lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}
