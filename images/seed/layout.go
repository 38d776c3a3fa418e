// Package seed reads an image's partition table (its contract.ImageLayout, taken
// once when the image enters the catalog) and writes cloud-init's NoCloud seed onto
// a disk after the image: a new partition in the image's own table (GPT or MBR),
// formatted FAT32 with the label CIDATA, holding meta-data, user-data and
// network-config. Partition tables and FAT are github.com/diskfs/go-diskfs's; the
// placement rule is contract.PlaceSeed's, so the plan a person approved and the
// bytes written agree.
package seed

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"lpmos.dev/lpmos/contract"
)

const sectorSize = 512

// HeadBytes is how much of an image ReadLayout needs from its start: the MBR, the
// GPT header and a 128-entry array at LBA 2 end well inside it.
const HeadBytes = 1 << 20

// ReadLayout reads the partition table of an image or disk of size bytes. A GPT is
// recognised by its header at LBA 1 (its protective MBR alone is not trusted), an
// MBR by its signature with at least one entry; anything else is "none". Each
// partition's first sector is read to find a CIDATA volume already there.
func ReadLayout(r io.ReaderAt, size int64) (contract.ImageLayout, error) {
	f := readerFile{r: r, size: size}
	hdr := make([]byte, 8)
	if _, err := r.ReadAt(hdr, sectorSize); err != nil && !errors.Is(err, io.EOF) {
		return contract.ImageLayout{}, fmt.Errorf("read GPT header: %w", err)
	}
	if string(hdr) == "EFI PART" {
		t, err := gpt.Read(&f, sectorSize, sectorSize)
		if err != nil {
			return contract.ImageLayout{}, fmt.Errorf("read GPT: %w", err)
		}
		return gptLayout(r, t)
	}
	t, err := mbr.Read(&f, sectorSize, sectorSize)
	if err != nil {
		return contract.ImageLayout{Table: "none"}, nil // no signature: a bare filesystem or random bytes
	}
	l := contract.ImageLayout{Table: "mbr", SectorSize: sectorSize, Slots: len(t.Partitions)}
	for i, p := range t.Partitions {
		if p.Type == mbr.Empty || p.Size == 0 {
			if l.FreeSlot == 0 {
				l.FreeSlot = i + 1
			}
			continue
		}
		if p.Type == mbr.GPTProtective {
			return contract.ImageLayout{}, errors.New("protective MBR without a GPT header at LBA 1")
		}
		l.Used++
		switch p.Type {
		case 0x05, 0x0f, 0x85:
			l.Extended = true
		}
		l.EndBytes = max(l.EndBytes, (int64(p.Start)+int64(p.Size))*sectorSize)
		if isSeed(r, int64(p.Start)*sectorSize, "") {
			l.Seed = fmt.Sprintf("partition %d", i+1)
		}
	}
	if l.Used == 0 {
		return contract.ImageLayout{Table: "none"}, nil // a boot sector (a FAT superfloppy) has the signature too
	}
	return l, nil
}

func gptLayout(r io.ReaderAt, t *gpt.Table) (contract.ImageLayout, error) {
	l := contract.ImageLayout{Table: "gpt", SectorSize: t.LogicalSectorSize}
	l.Slots = gptSlots(r, t.LogicalSectorSize)
	used := map[int]bool{}
	for _, p := range t.Partitions {
		if p.Type == gpt.Unused {
			continue
		}
		used[p.Index] = true
		l.Used++
		l.EndBytes = max(l.EndBytes, int64(p.End+1)*int64(t.LogicalSectorSize))
		if isSeed(r, int64(p.Start)*int64(t.LogicalSectorSize), p.Name) {
			l.Seed = fmt.Sprintf("partition %d", p.Index)
		}
	}
	for i := 1; i <= l.Slots; i++ {
		if !used[i] {
			l.FreeSlot = i
			break
		}
	}
	return l, nil
}

// gptSlots is how many entries the table's array holds; go-diskfs keeps the count
// private, so it is read from the header (LBA 1, offset 80; UEFI 2.10 5.3.2).
func gptSlots(r io.ReaderAt, sector int) int {
	b := make([]byte, 84)
	if _, err := r.ReadAt(b, int64(sector)); err != nil {
		return 0
	}
	return int(binary.LittleEndian.Uint32(b[80:84]))
}

// isSeed reports whether the partition at off is a CIDATA volume: its GPT name, or
// the FAT volume label in its boot sector (FAT12/16 at 0x2B, FAT32 at 0x47).
func isSeed(r io.ReaderAt, off int64, name string) bool {
	if strings.EqualFold(strings.TrimSpace(name), contract.SeedLabel) {
		return true
	}
	b := make([]byte, sectorSize)
	if n, _ := r.ReadAt(b, off); n < sectorSize || b[510] != 0x55 || b[511] != 0xaa {
		return false
	}
	for _, at := range []int{0x2b, 0x47} {
		if strings.EqualFold(strings.TrimSpace(string(b[at:at+11])), contract.SeedLabel) {
			return true
		}
	}
	return false
}

// readerFile lets go-diskfs read an io.ReaderAt (its backend.File is an fs.File
// with ReadAt and Seek).
type readerFile struct {
	r    io.ReaderAt
	size int64
	off  int64
}

func (f *readerFile) ReadAt(p []byte, off int64) (int, error) { return f.r.ReadAt(p, off) }
func (f *readerFile) Read(p []byte) (int, error) {
	n, err := f.r.ReadAt(p, f.off)
	f.off += int64(n)
	return n, err
}
func (f *readerFile) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		f.off = off
	case io.SeekCurrent:
		f.off += off
	case io.SeekEnd:
		f.off = f.size + off
	}
	return f.off, nil
}
func (f *readerFile) Close() error               { return nil }
func (f *readerFile) Stat() (fs.FileInfo, error) { return fileInfo{f.size}, nil }

type fileInfo struct{ size int64 }

func (i fileInfo) Name() string       { return "image" }
func (i fileInfo) Size() int64        { return i.size }
func (i fileInfo) Mode() fs.FileMode  { return 0 }
func (i fileInfo) ModTime() time.Time { return time.Time{} }
func (i fileInfo) IsDir() bool        { return false }
func (i fileInfo) Sys() any           { return nil }

// Scanner reads an image's layout while the image streams past (the catalog hashes
// it in one pass): it keeps the head, then each partition's first sector. Write the
// decompressed bytes to it; Layout answers at the end.
type Scanner struct {
	head    []byte
	starts  map[int64][]byte // partition start -> its first sector, once seen
	n       int64
	planned bool
}

// Write takes the next bytes of the image.
func (s *Scanner) Write(p []byte) (int, error) {
	at := s.n
	s.n += int64(len(p))
	if len(s.head) < HeadBytes {
		take := min(len(p), HeadBytes-len(s.head))
		s.head = append(s.head, p[:take]...)
	}
	if len(s.head) == HeadBytes && !s.planned {
		s.planned = true
		s.starts = partitionStarts(s.head)
	}
	for off, sec := range s.starts {
		// the part of the sector in this write, if it continues what was kept (a
		// start inside the head is read from the head)
		lo, hi := max(off+int64(len(sec)), at), min(off+sectorSize, s.n)
		if lo < hi && lo == off+int64(len(sec)) {
			s.starts[off] = append(sec, p[lo-at:hi-at]...)
		}
	}
	return len(p), nil
}

// Layout is the layout of the bytes written so far, as the whole image.
func (s *Scanner) Layout() (contract.ImageLayout, error) {
	if !s.planned {
		s.starts = partitionStarts(s.head)
	}
	return ReadLayout(sparse{head: s.head, secs: s.starts}, s.n)
}

// partitionStarts reads the table in head and lists the partitions' starts.
func partitionStarts(head []byte) map[int64][]byte {
	starts := map[int64][]byte{}
	f := readerFile{r: bytes.NewReader(head), size: int64(len(head))}
	if len(head) >= 2*sectorSize && string(head[sectorSize:sectorSize+8]) == "EFI PART" {
		if t, err := gpt.Read(&f, sectorSize, sectorSize); err == nil {
			for _, p := range t.Partitions {
				if p.Type != gpt.Unused {
					starts[int64(p.Start)*sectorSize] = nil
				}
			}
		}
		return starts
	}
	if t, err := mbr.Read(&f, sectorSize, sectorSize); err == nil {
		for _, p := range t.Partitions {
			if p.Type != mbr.Empty && p.Size != 0 {
				starts[int64(p.Start)*sectorSize] = nil
			}
		}
	}
	return starts
}

// sparse is the head of an image and a few sectors of it; reads elsewhere are
// zeros (ReadLayout reads nothing else).
type sparse struct {
	head []byte
	secs map[int64][]byte
}

func (s sparse) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	if off < int64(len(s.head)) {
		n := copy(p, s.head[off:])
		if n == len(p) {
			return n, nil
		}
	}
	if sec, ok := s.secs[off]; ok {
		copy(p, sec)
	}
	return len(p), nil
}
