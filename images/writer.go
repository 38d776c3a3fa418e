package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Errors a failed Write wraps, so the agent can report why an install failed.
var (
	ErrInvalidSource = errors.New("invalid image source")
	ErrNotFound      = errors.New("image not found on server")
	ErrDownload      = errors.New("image download failed")
	ErrTooLarge      = errors.New("image larger than target")
	ErrShortImage    = errors.New("image shorter than its catalog size")
	ErrLongImage     = errors.New("image longer than its catalog size")
	ErrCorrupt       = errors.New("image stream corrupt")
	ErrChecksum      = errors.New("image checksum mismatch")
	ErrWrite         = errors.New("writing target failed")
	ErrReadBack      = errors.New("read-back verification failed")
)

// Reason is a short, stable code for why a Write failed, for the agent's
// progress report and the task's failure message ("checksum_mismatch",
// "image_too_large", ...); "" for nil and "failed" for anything unexpected.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range []struct {
		err  error
		code string
	}{
		{ErrTooLarge, "image_too_large"},
		{ErrChecksum, "checksum_mismatch"},
		{ErrReadBack, "readback_mismatch"},
		{ErrShortImage, "short_image"},
		{ErrLongImage, "long_image"},
		{ErrCorrupt, "corrupt_image"},
		{ErrNotFound, "image_not_found"},
		{ErrDownload, "download_failed"},
		{ErrWrite, "write_failed"},
		{ErrInvalidSource, "invalid_source"},
		{context.Canceled, "cancelled"},
		{context.DeadlineExceeded, "timeout"},
	} {
		if errors.Is(err, r.err) {
			return r.code
		}
	}
	return "failed"
}

// Source says what to fetch and what it must decompress to. The appliance
// fills it from a catalog Entry; the agent passes it to Write unchanged.
type Source struct {
	URL    string `json:"url"`
	Format Format `json:"format"`
	Size   int64  `json:"size"`   // decompressed bytes
	SHA256 string `json:"sha256"` // hex sha256 of the decompressed image
}

// Stage names the phase a Write is in.
type Stage string

const (
	// StageDownloading: fetching, decompressing, hashing and writing, all at once.
	StageDownloading Stage = "downloading"
	StageSyncing     Stage = "syncing"
	StageVerifying   Stage = "verifying"
	StageDone        Stage = "done"
)

// Progress is a snapshot reported at least once per ProgressInterval and at
// every stage change. Done and Total count decompressed bytes of the current
// stage (written, then read back).
type Progress struct {
	Stage      Stage
	Done       int64
	Total      int64
	Rate       float64       // bytes per second, smoothed
	ETA        time.Duration // for the current stage; 0 when unknown
	Downloaded int64         // compressed bytes received
	Retries    int           // resumed downloads so far
}

// Percent is Done/Total in percent.
func (p Progress) Percent() float64 {
	if p.Total <= 0 {
		return 0
	}
	return 100 * float64(p.Done) / float64(p.Total)
}

// Options tunes Write. The zero value is usable.
type Options struct {
	// Client fetches the image; default: a client with header and dial
	// timeouts but no overall timeout (Retry.Stall catches hung bodies).
	Client *http.Client
	// Header is sent with every request of the download (the agent's token for
	// an appliance that serves images only to approved agents).
	Header http.Header
	// Progress, if set, is called from one goroutine at a time.
	Progress         func(Progress)
	ProgressInterval time.Duration // default 1s
	Retry            Retry
	// ChunkSize is the size of each write; default 4 MiB.
	ChunkSize int
	// InFlight is how many writes (and read-back reads) run at once; default 4.
	InFlight int
	// NoReadBack skips the read-back after fsync. The streamed bytes are
	// still hashed. For benchmarks; an install should never set it.
	NoReadBack bool
	Logger     *slog.Logger
}

// Result describes a successful Write.
type Result struct {
	Bytes      int64  // decompressed bytes written
	Downloaded int64  // compressed bytes received
	SHA256     string // verified hash
	Retries    int
	Stream     time.Duration // download + decompress + write
	// Backpressure is how long the download waited for a free buffer, i.e.
	// for the hasher or the disk. Near zero: the network or the decoder
	// was the limit; near Stream: the disk (or hashing) was.
	Backpressure time.Duration
	Sync         time.Duration
	Verify       time.Duration
	Elapsed      time.Duration
}

var defaultClient = &http.Client{Transport: &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	ResponseHeaderTimeout: 30 * time.Second,
	TLSHandshakeTimeout:   10 * time.Second,
	IdleConnTimeout:       90 * time.Second,
}}

// Write streams src onto dst: HTTP GET, decompress by src.Format, hash, write
// in large chunks with several writes in flight, fsync, then read the range
// back and hash it again. It succeeds only if both hashes equal src.SHA256.
// On error the target holds a partial image; the caller must not boot it.
//
// Resume: a dropped or stalled connection is re-requested from the next
// compressed byte ("Range: bytes=N-", with If-Range). The retry happens
// below the decompressor, which keeps its state and sees one unbroken
// stream, so resuming is exact for every format without restarting the
// decode; a changed file on the server fails the write instead.
func Write(ctx context.Context, src Source, dst Target, opt Options) (Result, error) {
	start := time.Now()
	opt = opt.withDefaults()
	want, err := src.validate()
	if err != nil {
		return Result{}, err
	}
	capacity, err := dst.Capacity()
	if err != nil {
		return Result{}, fmt.Errorf("%w: target size: %v", ErrWrite, err)
	}
	if src.Size > capacity {
		return Result{}, fmt.Errorf("%w: image is %d bytes, target holds %d", ErrTooLarge, src.Size, capacity)
	}
	align := 1
	if a, ok := dst.(aligner); ok {
		align = a.Alignment()
	}
	chunk := max(opt.ChunkSize/align*align, align)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fetch := newFetcher(ctx, opt.Client, src.URL, opt.Header, opt.Retry, opt.Logger)
	defer fetch.Close()
	prog := newReporter(opt.Progress, opt.ProgressInterval, &fetch.offset, &fetch.retries)
	defer prog.stop()
	prog.set(StageDownloading, src.Size, 0)

	res := Result{Bytes: src.Size}
	sum, err := stream(ctx, cancel, src, fetch, dst, chunk, align, opt.InFlight, prog, &res.Backpressure)
	res.Downloaded, res.Retries = fetch.offset.Load(), int(fetch.retries.Load())
	res.Stream = time.Since(start)
	if err != nil {
		return res, err
	}
	if sum != want {
		return res, fmt.Errorf("%w: downloaded image hashes to %s, catalog says %s", ErrChecksum, sum, want)
	}

	prog.set(StageSyncing, src.Size, src.Size)
	t := time.Now()
	if err := dst.Sync(); err != nil {
		return res, fmt.Errorf("%w: fsync: %v", ErrWrite, err)
	}
	res.Sync = time.Since(t)

	if !opt.NoReadBack {
		prog.set(StageVerifying, src.Size, 0)
		t = time.Now()
		got, err := readBack(ctx, dst, src.Size, chunk, align, opt.InFlight, prog)
		if err != nil {
			return res, err
		}
		if got != want {
			return res, fmt.Errorf("%w: disk holds %s after writing, want %s", ErrReadBack, got, want)
		}
		res.Verify = time.Since(t)
	}
	res.SHA256 = want
	res.Elapsed = time.Since(start)
	prog.set(StageDone, src.Size, src.Size)
	return res, nil
}

func (o Options) withDefaults() Options {
	if o.Client == nil {
		o.Client = defaultClient
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = time.Second
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = 4 << 20
	}
	if o.InFlight <= 0 {
		o.InFlight = 4
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

func (s Source) validate() (string, error) {
	if s.URL == "" {
		return "", fmt.Errorf("%w: no URL", ErrInvalidSource)
	}
	if _, err := ParseFormat(string(s.Format)); err != nil || s.Format == "" {
		return "", fmt.Errorf("%w: format %q", ErrInvalidSource, s.Format)
	}
	if s.Size <= 0 {
		return "", fmt.Errorf("%w: size %d (the catalog must give the decompressed size)", ErrInvalidSource, s.Size)
	}
	want := strings.ToLower(s.SHA256)
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("%w: sha256 %q", ErrInvalidSource, s.SHA256)
	}
	return want, nil
}

// chunk is one buffer on its way to the hasher and a writer; the last of
// the two to finish returns it to the pool.
type chunk struct {
	buf  []byte
	off  int64
	refs atomic.Int32
}

// stream runs the pipeline: this goroutine reads the decompressed stream into
// pooled buffers; a hasher goroutine hashes them in order while inFlight
// writer goroutines pwrite them at their offsets. Buffers, not goroutines,
// bound memory: inFlight+3 chunks.
func stream(ctx context.Context, cancel context.CancelCauseFunc, src Source, fetch *fetcher, dst Target, size, align, inFlight int, prog *reporter, waited *time.Duration) (string, error) {
	nbuf := inFlight + 3
	pool := make(chan []byte, nbuf)
	for range nbuf {
		pool <- alignedBuf(size, align)
	}
	hashq := make(chan *chunk, nbuf)
	writeq := make(chan *chunk, nbuf)
	release := func(c *chunk) {
		if c.refs.Add(-1) == 0 {
			pool <- c.buf[:cap(c.buf)]
		}
	}

	h := sha256.New()
	var wg sync.WaitGroup
	wg.Go(func() {
		for c := range hashq {
			h.Write(c.buf)
			release(c)
		}
	})
	for range inFlight {
		wg.Go(func() {
			for c := range writeq {
				if ctx.Err() == nil {
					n, err := dst.WriteAt(c.buf, c.off)
					if err == nil && n < len(c.buf) {
						err = io.ErrShortWrite
					}
					if err != nil {
						cancel(fmt.Errorf("%w: at offset %d: %v", ErrWrite, c.off, err))
					}
					prog.done.Add(int64(n))
				}
				release(c)
			}
		})
	}

	rerr := func() error {
		dec, closeDec, err := decompressor(src.Format, fetch)
		if err != nil {
			return fetchErr(fetch, err)
		}
		defer closeDec()
		var off int64
		for off < src.Size {
			var buf []byte
			select {
			case buf = <-pool:
			default:
				t := time.Now()
				select {
				case buf = <-pool:
				case <-ctx.Done():
					return context.Cause(ctx)
				}
				*waited += time.Since(t)
			}
			n, err := io.ReadFull(dec, buf[:min(int64(len(buf)), src.Size-off)])
			if n > 0 {
				c := &chunk{buf: buf[:n], off: off}
				c.refs.Store(2)
				hashq <- c
				writeq <- c
				off += int64(n)
			} else {
				pool <- buf
			}
			if err != nil {
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					if fe := fetch.err; fe != nil {
						return fe
					}
					return fmt.Errorf("%w: stream ended after %d of %d bytes", ErrShortImage, off, src.Size)
				}
				return fetchErr(fetch, decodeErr(src.Format, err))
			}
		}
		// Read to the end: gzip and zstd check their trailers only there, and a
		// stream that goes on is not the image the catalog describes.
		var one [1]byte
		n, err := io.ReadFull(dec, one[:])
		if n > 0 {
			return fmt.Errorf("%w: more than %d bytes", ErrLongImage, src.Size)
		}
		if err != io.EOF {
			return fetchErr(fetch, decodeErr(src.Format, err))
		}
		return nil
	}()
	close(hashq)
	close(writeq)
	wg.Wait()
	if rerr != nil {
		return "", rerr
	}
	if err := context.Cause(ctx); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fetchErr prefers the download's own error over what a decoder made of it.
func fetchErr(f *fetcher, err error) error {
	if f.err != nil {
		return f.err
	}
	return err
}

// readBack hashes [0, size) of dst with inFlight reads at once, hashing in
// order as each read completes.
func readBack(ctx context.Context, dst Target, size int64, bufSize, align, inFlight int, prog *reporter) (string, error) {
	if d, ok := dst.(cacheDropper); ok {
		// Without this a buffered target would be "verified" from memory.
		if err := d.DropCache(0, size); err != nil {
			return "", fmt.Errorf("%w: drop page cache: %v", ErrReadBack, err)
		}
	}
	type read struct {
		buf  []byte
		off  int64
		err  error
		done chan struct{}
	}
	pool := make(chan []byte, inFlight+1)
	for range inFlight + 1 {
		pool <- alignedBuf(bufSize, align)
	}
	queue := make(chan *read, inFlight+1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(queue)
		for off := int64(0); off < size; off += int64(bufSize) {
			var buf []byte
			select {
			case buf = <-pool:
			case <-ctx.Done():
				return
			}
			r := &read{buf: buf[:min(int64(bufSize), size-off)], off: off, done: make(chan struct{})}
			queue <- r
			go func() {
				defer close(r.done)
				n, err := dst.ReadAt(r.buf, r.off)
				if err == io.EOF && n == len(r.buf) {
					err = nil // io.ReaderAt may report EOF with the last full read
				}
				r.err = err
			}()
		}
	}()
	h := sha256.New()
	var err error
	for r := range queue {
		<-r.done
		if err == nil && r.err != nil {
			err = fmt.Errorf("%w: read at offset %d: %v", ErrReadBack, r.off, r.err)
			cancel()
		}
		if err == nil {
			h.Write(r.buf)
			prog.done.Add(int64(len(r.buf)))
		}
		pool <- r.buf[:cap(r.buf)]
	}
	if err != nil {
		return "", err
	}
	if ctx.Err() != nil {
		return "", context.Cause(ctx)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
