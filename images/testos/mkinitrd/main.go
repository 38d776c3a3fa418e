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
	"log"
	"os"
)

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
