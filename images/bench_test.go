package images

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"lpmos.dev/lpmos/contract"
)

// BenchmarkWrite measures the whole writer (loopback HTTP, decode, hash,
// O_DIRECT writes, fsync, read-back) on a 64 MiB image. scripts/bench-images.sh
// compares it with curl | zstd -d | dd and dd alone on 1 GiB.
func BenchmarkWrite(b *testing.B) {
	data := testImage(b, 64<<20)
	dir := b.TempDir()
	cat, err := OpenCatalog(dir)
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(cat.Handler())
	defer srv.Close()
	for _, f := range []Format{FormatRaw, FormatZstd, FormatGzip} {
		name := "bench" + ext[f]
		if err := os.WriteFile(filepath.Join(dir, name), compressNow(b, f, data), 0o644); err != nil {
			b.Fatal(err)
		}
		e, err := cat.Add(b.Context(), contract.OSRef{OSType: "bench", OSVersion: string(f)}, filepath.Join(dir, name), f)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(string(f), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				path := filepath.Join(b.TempDir(), "disk")
				dst, err := OpenTarget(path, TargetOptions{Direct: true, Create: true})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Write(b.Context(), e.Source(srv.URL), dst, Options{}); err != nil {
					b.Fatal(err)
				}
				dst.Close()
				os.Remove(path)
			}
		})
	}
}
