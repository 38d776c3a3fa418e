package main

import (
	"fmt"
	"io"
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
