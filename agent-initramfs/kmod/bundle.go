package kmod

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Bundle copies the named modules and their dependencies from src into the flat
// directory dst and writes dst/modules.alias for them, so the initramfs carries a small
// self-describing modules directory. It returns the copied modules in load order.
// Names missing from src are an error: a typo in the build's list must not silently
// drop a driver.
func Bundle(src, dst string, names []string) ([]string, error) {
	ix, err := Open(src)
	if err != nil {
		return nil, err
	}
	order, err := ix.Closure(names...)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, err
	}
	for _, name := range order {
		p, err := ix.Path(name)
		if err != nil {
			return nil, err
		}
		if err := copyFile(p, filepath.Join(dst, filepath.Base(p))); err != nil {
			return nil, err
		}
	}
	// Re-index the copy so the alias file lists exactly what was shipped.
	out, err := Open(dst)
	if err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dst, AliasFile))
	if err != nil {
		return nil, err
	}
	if err := out.WriteAlias(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return order, f.Close()
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}
