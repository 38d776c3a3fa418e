//go:build !linux

package images

import (
	"errors"
	"os"
	"unsafe"
)

func openDirect(string) (*os.File, error) {
	return nil, errors.New("O_DIRECT is only supported on Linux")
}

func dropCache(*os.File, int64, int64) error { return nil }

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func addrAligned(p []byte) bool { return uintptrOf(p)%directAlign == 0 }

func lockDir(string) (func(), error) { return func() {}, nil }
