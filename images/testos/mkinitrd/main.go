// Command mkinitrd writes the test OS initramfs: a gzip'd newc cpio holding /init and the
// few directories and the /dev/console node it needs. Written in Go rather than with
// cpio(1) so the build needs no root (device node) and is byte-for-byte reproducible
// (fixed mtimes, owners and inode numbers).
//
//	mkinitrd -init PATH -o initrd.img
package main

import (
	"bufio"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
)

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChar = 0o020000
)

type entry struct {
	name         string
	mode         uint32
	rmajor, rmin uint32
	data         []byte
}

func main() {
	initPath := flag.String("init", "", "the init binary")
	out := flag.String("o", "", "output file (gzip'd newc cpio)")
	flag.Parse()
	if *initPath == "" || *out == "" {
		log.Fatal("usage: mkinitrd -init PATH -o FILE")
	}
	bin, err := os.ReadFile(*initPath)
	if err != nil {
		log.Fatal(err)
	}
	entries := []entry{
		{name: "dev", mode: modeDir | 0o755},
		{name: "dev/console", mode: modeChar | 0o600, rmajor: 5, rmin: 1},
		{name: "proc", mode: modeDir | 0o555},
		{name: "sys", mode: modeDir | 0o555},
		{name: "init", mode: modeFile | 0o755, data: bin},
	}
	tmp := *out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		log.Fatal(err)
	}
	bw := bufio.NewWriter(f)
	zw, _ := gzip.NewWriterLevel(bw, gzip.BestCompression) // header has no name/mtime: reproducible
	if err := writeCpio(zw, entries); err != nil {
		log.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		log.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(tmp, *out); err != nil {
		log.Fatal(err)
	}
}

// writeCpio writes entries in the "newc" format the kernel unpacks, then the trailer.
func writeCpio(w io.Writer, entries []entry) error {
	for i, e := range append(entries, entry{name: "TRAILER!!!"}) {
		nlink := 1
		if e.mode&modeDir != 0 {
			nlink = 2
		}
		ino := i + 1
		if e.name == "TRAILER!!!" {
			ino = 0
		}
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rmajor, e.rmin, len(e.name)+1, 0)
		if _, err := io.WriteString(w, hdr+e.name+"\x00"+pad(len(hdr)+len(e.name)+1)); err != nil {
			return err
		}
		if _, err := w.Write(e.data); err != nil {
			return err
		}
		if _, err := io.WriteString(w, pad(len(e.data))); err != nil {
			return err
		}
	}
	return nil
}

// pad returns the NULs that align n to the format's 4-byte boundary.
func pad(n int) string {
	return "\x00\x00\x00"[:(4-n%4)%4]
}
