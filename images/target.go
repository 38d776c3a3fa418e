package images

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// Target is where an image is written: a block device or a file. *File
// implements it; tests inject faulty ones.
type Target interface {
	io.WriterAt
	io.ReaderAt
	// Sync makes the written data durable (fsync).
	Sync() error
	// Capacity is how many bytes the target can hold; math.MaxInt64 for a
	// file that grows as needed.
	Capacity() (int64, error)
}

// cacheDropper is implemented by targets that can evict the written range
// from the page cache, so the read-back comes from the disk, not memory.
type cacheDropper interface {
	DropCache(off, n int64) error
}

// aligner is implemented by targets that need aligned buffers (O_DIRECT).
type aligner interface {
	Alignment() int
}

// File is a Target over a block device or a regular file.
type File struct {
	f        *os.File // the descriptor used for I/O (O_DIRECT when direct)
	buffered *os.File // a plain descriptor for the unaligned tail in direct mode
	capacity int64
	direct   bool
}

// TargetOptions tunes OpenTarget.
type TargetOptions struct {
	// Direct opens with O_DIRECT: writes bypass the page cache, so many
	// large writes in flight keep the disk busy without the dirty-page
	// throttling and fsync burst of buffered I/O, and the read-back really
	// reads the disk. Linux only; needs a filesystem or device that supports it.
	Direct bool
	// Create makes a missing path a new regular file (a host run writing an
	// image file). Off by default: a mistyped /dev path must fail, not turn
	// into a file that "installs" successfully in the initramfs's tmpfs.
	Create bool
}

// directAlign is the buffer and offset alignment used for O_DIRECT; 4 KiB
// satisfies every logical block size in use (512 and 4096).
const directAlign = 4096

// OpenTarget opens path for writing an image. A block device's capacity is
// its size. A regular file that already has a size (a pre-sized VM disk)
// has that capacity; an empty or new file grows as needed.
func OpenTarget(path string, opt TargetOptions) (*File, error) {
	flags := os.O_RDWR
	if opt.Create {
		flags |= os.O_CREATE
	}
	plain, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open target: %w", err)
	}
	t := &File{f: plain, buffered: plain}
	fi, err := plain.Stat()
	if err != nil {
		plain.Close()
		return nil, fmt.Errorf("open target: %w", err)
	}
	switch {
	case fi.Mode()&os.ModeDevice != 0:
		// Seek to the end is how a block device reports its size without an
		// ioctl (same answer as BLKGETSIZE64).
		end, err := plain.Seek(0, io.SeekEnd)
		if err != nil {
			plain.Close()
			return nil, fmt.Errorf("open target %s: size: %w", path, err)
		}
		t.capacity = end
	case fi.Mode().IsRegular() && fi.Size() > 0:
		t.capacity = fi.Size()
	case fi.Mode().IsRegular():
		t.capacity = math.MaxInt64
	default:
		plain.Close()
		return nil, fmt.Errorf("open target %s: not a block device or regular file (%v)", path, fi.Mode())
	}
	if opt.Direct {
		d, err := openDirect(path)
		if err != nil {
			plain.Close()
			return nil, fmt.Errorf("open target %s with O_DIRECT: %w", path, err)
		}
		t.f, t.direct = d, true
	}
	return t, nil
}

// WriteAt writes p at off. In direct mode an unaligned piece (only the
// image's last chunk) goes through the buffered descriptor.
func (t *File) WriteAt(p []byte, off int64) (int, error) {
	if t.direct && !aligned(p, off) {
		return t.buffered.WriteAt(p, off)
	}
	return t.f.WriteAt(p, off)
}

// ReadAt reads len(p) bytes at off, directly from the disk in direct mode.
func (t *File) ReadAt(p []byte, off int64) (int, error) {
	if t.direct && !aligned(p, off) {
		return t.buffered.ReadAt(p, off)
	}
	return t.f.ReadAt(p, off)
}

// Sync flushes both descriptors' data to the disk.
func (t *File) Sync() error {
	if err := t.f.Sync(); err != nil {
		return err
	}
	if t.buffered != t.f {
		return t.buffered.Sync()
	}
	return nil
}

// Capacity reports the target's size limit.
func (t *File) Capacity() (int64, error) { return t.capacity, nil }

// Alignment is the buffer alignment the target needs (1 when buffered).
func (t *File) Alignment() int {
	if t.direct {
		return directAlign
	}
	return 1
}

// DropCache evicts [off, off+n) from the page cache so reads hit the disk.
func (t *File) DropCache(off, n int64) error { return dropCache(t.buffered, off, n) }

// Close closes the descriptors.
func (t *File) Close() error {
	err := t.f.Close()
	if t.buffered != t.f {
		err = errors.Join(err, t.buffered.Close())
	}
	return err
}

func aligned(p []byte, off int64) bool {
	return off%directAlign == 0 && len(p)%directAlign == 0 && len(p) > 0 && addrAligned(p)
}

// alignedBuf returns a buffer of n bytes whose start is aligned to align.
func alignedBuf(n, align int) []byte {
	if align <= 1 {
		return make([]byte, n)
	}
	b := make([]byte, n+align)
	skip := (align - int(uintptrOf(b)%uintptr(align))) % align
	return b[skip : skip+n : skip+n]
}
