package images

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Format is how an image file is compressed. It always comes from the catalog
// entry: the writer never guesses it from the bytes, so a mislabelled image fails
// loudly instead of being written as something else.
type Format string

const (
	FormatRaw  Format = "raw"
	FormatGzip Format = "gz"
	FormatZstd Format = "zst"
	FormatXz   Format = "xz"
)

// ParseFormat accepts the catalog names and a few common aliases.
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(strings.TrimPrefix(s, ".")) {
	case "raw", "img", "":
		return FormatRaw, nil
	case "gz", "gzip":
		return FormatGzip, nil
	case "zst", "zstd":
		return FormatZstd, nil
	case "xz":
		return FormatXz, nil
	}
	return "", fmt.Errorf("unknown image format %q (want raw, gz, zst or xz)", s)
}

// FormatFromName derives the format from a file name's extension. Only the
// operator-facing command uses it, where the operator chose the file name.
func FormatFromName(name string) Format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".gz", ".tgz":
		return FormatGzip
	case ".zst", ".zstd":
		return FormatZstd
	case ".xz":
		return FormatXz
	}
	return FormatRaw
}

// decompressor wraps r in the decoder for f. The returned close func releases
// decoder goroutines and memory.
func decompressor(f Format, r io.Reader) (io.Reader, func(), error) {
	switch f {
	case FormatRaw:
		return r, func() {}, nil
	case FormatGzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, decodeErr(f, err)
		}
		return zr, func() { zr.Close() }, nil
	case FormatZstd:
		// The frame checksum (xxhash) is skipped: the sha256 of the whole image
		// is checked anyway, and that saves ~10% of the decoding CPU.
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(zstdConcurrency()), zstd.WithDecoderMaxWindow(1<<30), zstd.IgnoreChecksum(true))
		if err != nil {
			return nil, nil, decodeErr(f, err)
		}
		return zr, zr.Close, nil
	case FormatXz:
		// xz reads in small pieces; a buffer keeps it from issuing tiny HTTP reads.
		xr, err := xz.NewReader(bufio.NewReaderSize(r, 1<<20))
		if err != nil {
			return nil, nil, decodeErr(f, err)
		}
		return xr, func() {}, nil
	}
	return nil, nil, fmt.Errorf("%w: unknown format %q", ErrInvalidSource, f)
}

// decodeErr classifies a decoder failure: a stream that ends early is a short
// image, anything else is corruption. Download errors pass through unchanged.
func decodeErr(f Format, err error) error {
	var de *downloadError
	switch {
	case errors.As(err, &de):
		return err
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return fmt.Errorf("%w: %s stream ended early: %v", ErrShortImage, f, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrCorrupt, f, err)
}

// zstdConcurrency lets the decoder run ahead in a second goroutine only when
// there are cores to spare: on a 2-core machine the hasher already has the
// other core, and the hand-off would cost more than it gains.
func zstdConcurrency() int {
	return min(2, max(1, runtime.GOMAXPROCS(0)-2))
}
