// Package kmod loads Linux kernel modules by modalias without kmod's tools: the Debian
// kernel package ships no modules.dep, so dependencies come from each module's own
// .modinfo ELF section, and aliases from a modules.alias file (written at build time by
// WriteAlias) or, failing that, from the modules themselves.
package kmod

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Info is what a module says about itself in its .modinfo section.
type Info struct {
	Name    string   // "virtio_net": always with underscores
	Depends []string // hard dependencies, loaded first
	SoftPre []string // "softdep=pre: ..." modules, loaded first when present
	Aliases []string // modalias patterns (fnmatch-style) this module drives
}

// ReadInfo reads the .modinfo section of a module file (.ko, .ko.xz or .ko.zst).
func ReadInfo(path string) (Info, error) {
	b, err := readModule(path)
	if err != nil {
		return Info{}, err
	}
	return ParseELF(b)
}

// ParseELF reads the .modinfo section of an uncompressed module image.
func ParseELF(image []byte) (Info, error) {
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return Info{}, fmt.Errorf("parse module ELF: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return Info{}, fmt.Errorf("module has no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return Info{}, fmt.Errorf("read .modinfo: %w", err)
	}
	return parseModinfo(data), nil
}

// parseModinfo splits the NUL-separated key=value strings of a .modinfo section.
func parseModinfo(data []byte) Info {
	var info Info
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			info.Name = Normalize(v)
		case "alias":
			info.Aliases = append(info.Aliases, v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					info.Depends = append(info.Depends, Normalize(d))
				}
			}
		case "softdep":
			info.SoftPre = append(info.SoftPre, parseSoftdepPre(v)...)
		}
	}
	return info
}

// parseSoftdepPre returns the "pre:" modules of a softdep value ("pre: crc32c post: x").
func parseSoftdepPre(v string) []string {
	var pre []string
	in := false
	for _, f := range strings.Fields(v) {
		switch f {
		case "pre:":
			in = true
		case "post:":
			in = false
		default:
			if in {
				pre = append(pre, Normalize(f))
			}
		}
	}
	return pre
}

// Normalize turns a module or file name into the kernel's module name: the kernel
// treats '-' and '_' alike and reports names with '_' (virtio-rng.ko is virtio_rng).
func Normalize(name string) string {
	for _, ext := range []string{".xz", ".zst", ".ko"} {
		name = strings.TrimSuffix(name, ext)
	}
	return strings.ReplaceAll(name, "-", "_")
}

// readModule returns the uncompressed bytes of a module file.
func readModule(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(path, ".ko.xz"):
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		r = xr
	case strings.HasSuffix(path, ".ko.zst"):
		zr, err := zstd.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// isModuleFile reports whether a file name is a (possibly compressed) kernel module.
func isModuleFile(name string) bool {
	return strings.HasSuffix(name, ".ko") || strings.HasSuffix(name, ".ko.xz") || strings.HasSuffix(name, ".ko.zst")
}
