package ipxe

import (
	"embed"
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
)

// bin always holds README.md, so the embed compiles when
// scripts/fetch-ipxe.sh has not been run.
//
//go:embed bin
var embedded embed.FS

// First-stage file names, as scripts/fetch-ipxe.sh stores them.
const (
	FileBIOS     = "undionly.kpxe"  // BIOS PXE: chains through the ROM's UNDI driver
	FileEFIx64   = "ipxe.efi"       // x86-64 UEFI, iPXE's own NIC drivers
	FileSNPx64   = "snponly.efi"    // x86-64 UEFI, the firmware's SNP driver
	FileEFIARM64 = "ipxe-arm64.efi" // arm64 UEFI, when a build is available
)

// Binaries returns the embedded iPXE binaries. It may be empty of binaries
// (only boot files are visible through it; see BinariesDir).
func Binaries() fs.FS {
	sub, err := fs.Sub(embedded, "bin")
	if err != nil {
		panic(err) // the embed pattern guarantees bin exists
	}
	return bootFiles{sub}
}

// BinariesDir serves the iPXE binaries in dir instead (--ipxe-dir).
func BinariesDir(dir string) fs.FS { return bootFiles{os.DirFS(dir)} }

// HasBinary reports whether fsys holds name as a regular file.
func HasBinary(fsys fs.FS, name string) bool {
	st, err := fs.Stat(fsys, name)
	return err == nil && st.Mode().IsRegular()
}

// bootFiles hides everything but boot images in one flat directory, so TFTP
// and HTTP never serve the README, dotfiles or anything below a directory.
type bootFiles struct{ fsys fs.FS }

func isBootFile(name string) bool {
	if !fs.ValidPath(name) || strings.Contains(name, "/") || strings.HasPrefix(name, ".") {
		return false
	}
	switch path.Ext(name) {
	case ".efi", ".kpxe", ".kkpxe", ".pxe", ".lkrn":
		return true
	}
	return false
}

func (b bootFiles) Open(name string) (fs.File, error) {
	if name == "." {
		return b.fsys.Open(name)
	}
	if !isBootFile(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	f, err := b.fsys.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.Join(fs.ErrNotExist, err)}
	}
	return f, nil
}
