package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"lpmos.dev/lpmos/contract"
)

// testImage is a little disk image: random blocks, long zero runs and some
// text, with an odd length so the last write is unaligned.
func testImage(t testing.TB, size int) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, size)
	for off := 0; off < size; off += 256 << 10 {
		end := min(off+256<<10, size)
		switch (off / (256 << 10)) % 4 {
		case 0:
			for i := off; i < end; i++ {
				b[i] = byte(rng.Uint32())
			}
		case 1:
			copy(b[off:end], bytes.Repeat([]byte("GRUB loader, kernel, initrd, /etc/fstab\n"), (end-off)/40+1))
		}
	}
	return b
}

var compressed sync.Map // Format -> []byte of testImage(imageSize); xz in Go is slow

func compress(t testing.TB, f Format, data []byte) []byte {
	t.Helper()
	if len(data) == imageSize {
		if b, ok := compressed.Load(f); ok {
			return b.([]byte)
		}
	}
	b := compressNow(t, f, data)
	if len(data) == imageSize {
		compressed.Store(f, b)
	}
	return b
}

// compressNow uses the real tools operators use when they are installed
// (and they are much faster than Go's xz encoder), else the Go encoders.
func compressNow(t testing.TB, f Format, data []byte) []byte {
	t.Helper()
	tool := map[Format][]string{FormatGzip: {"gzip", "-1", "-c"}, FormatZstd: {"zstd", "-q", "-1", "-c"}, FormatXz: {"xz", "-0", "-T2", "-c"}}[f]
	if tool != nil {
		if _, err := exec.LookPath(tool[0]); err == nil {
			cmd := exec.Command(tool[0], tool[1:]...)
			cmd.Stdin = bytes.NewReader(data)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s: %v", tool[0], err)
			}
			return out
		}
	}
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch f {
	case FormatRaw:
		return data
	case FormatGzip:
		w = gzip.NewWriter(&buf)
	case FormatZstd:
		w, err = zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	case FormatXz:
		w, err = xz.NewWriter(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

var ext = map[Format]string{FormatRaw: ".img", FormatGzip: ".img.gz", FormatZstd: ".img.zst", FormatXz: ".img.xz"}

// fixture is an images directory with one image in every format, served by
// the real catalog Handler behind a server that can drop connections.
type fixture struct {
	dir  string
	data []byte
	cat  *Catalog
	srv  *httptest.Server
	drop *dropper
}

func newFixture(t *testing.T, size int) *fixture {
	t.Helper()
	fx := &fixture{dir: t.TempDir(), data: testImage(t, size)}
	var err error
	if fx.cat, err = OpenCatalog(fx.dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []Format{FormatRaw, FormatGzip, FormatZstd, FormatXz} {
		name := "test" + ext[f]
		if err := os.WriteFile(filepath.Join(fx.dir, name), compress(t, f, fx.data), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := fx.cat.Add(t.Context(), contract.OSRef{OSType: "testos", OSVersion: string(f)}, filepath.Join(fx.dir, name), f); err != nil {
			t.Fatal(err)
		}
	}
	fx.drop = &dropper{h: fx.cat.Handler()}
	fx.srv = httptest.NewServer(fx.drop)
	t.Cleanup(fx.srv.Close)
	return fx
}

func (fx *fixture) source(t *testing.T, f Format) Source {
	t.Helper()
	e, ok := fx.cat.Lookup(contract.OSRef{OSType: "testos", OSVersion: string(f)})
	if !ok {
		t.Fatalf("no catalog entry for %s", f)
	}
	return e.Source(fx.srv.URL + "/")
}

// dropper cuts the responses of the next requests after the given number of
// body bytes, the way a flaky network or a restarted proxy does.
type dropper struct {
	h      http.Handler
	mu     sync.Mutex
	cuts   []int64
	hang   bool // after a cut, hold the connection open instead of closing it
	ranges []string
}

func (d *dropper) cutNext(n ...int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cuts = append(d.cuts, n...)
}

func (d *dropper) requests() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.ranges)
}

func (d *dropper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	d.ranges = append(d.ranges, r.Header.Get("Range"))
	cut := int64(-1)
	if len(d.cuts) > 0 {
		cut, d.cuts = d.cuts[0], d.cuts[1:]
	}
	d.mu.Unlock()
	if cut >= 0 {
		w = &cutWriter{ResponseWriter: w, left: cut, hang: d.hang, done: r.Context().Done()}
	}
	d.h.ServeHTTP(w, r)
}

type cutWriter struct {
	http.ResponseWriter
	left int64
	hang bool
	done <-chan struct{}
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= c.left {
		c.left -= int64(len(p))
		return c.ResponseWriter.Write(p)
	}
	c.ResponseWriter.Write(p[:c.left])
	c.ResponseWriter.(http.Flusher).Flush()
	if c.hang {
		<-c.done // until the client gives up on us
	}
	panic(http.ErrAbortHandler) // the server closes the connection mid-body
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func fastRetry() Retry {
	return Retry{Attempts: 3, Backoff: func(int) time.Duration { return 0 }}
}

func newTarget(t *testing.T, opt TargetOptions) (*File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk")
	opt.Create = true
	dst, err := OpenTarget(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dst.Close() })
	return dst, path
}

func checkDisk(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:min(len(got), len(want))], want) || len(got) < len(want) {
		t.Fatalf("disk holds %d bytes (sha256 %s), want %d bytes (%s)", len(got), sum(got), len(want), sum(want))
	}
}

const imageSize = 9<<20 + 12345

func TestWriteEveryFormat(t *testing.T) {
	fx := newFixture(t, imageSize)
	for _, f := range []Format{FormatRaw, FormatGzip, FormatZstd, FormatXz} {
		for _, direct := range []bool{false, true} {
			t.Run(string(f)+map[bool]string{false: "", true: "/direct"}[direct], func(t *testing.T) {
				dst, path := newTarget(t, TargetOptions{Direct: direct})
				// Small chunks so even a 9 MiB image keeps several writes in flight.
				res, err := Write(testCtx(t), fx.source(t, f), dst, Options{ChunkSize: 1 << 20, Retry: fastRetry()})
				if err != nil {
					t.Fatal(err)
				}
				if res.Bytes != int64(len(fx.data)) || res.SHA256 != sum(fx.data) || res.Retries != 0 {
					t.Errorf("result %+v", res)
				}
				checkDisk(t, path, fx.data)
			})
		}
	}
}

func TestWriteResumesAfterTwoDrops(t *testing.T) {
	fx := newFixture(t, imageSize)
	for _, f := range []Format{FormatRaw, FormatGzip, FormatZstd, FormatXz} {
		t.Run(string(f), func(t *testing.T) {
			src := fx.source(t, f)
			e, _ := fx.cat.Lookup(contract.OSRef{OSType: "testos", OSVersion: string(f)})
			first, second := e.CompressedSize/3, e.CompressedSize/4
			fx.drop.cutNext(first, second)
			n := len(fx.drop.requests())
			dst, path := newTarget(t, TargetOptions{})
			res, err := Write(testCtx(t), src, dst, Options{Retry: fastRetry()})
			if err != nil {
				t.Fatal(err)
			}
			if res.Retries != 2 || res.Downloaded != e.CompressedSize {
				t.Errorf("retries %d, downloaded %d of %d", res.Retries, res.Downloaded, e.CompressedSize)
			}
			got := fx.drop.requests()[n:]
			want := []string{"", "bytes=" + itoa(first) + "-", "bytes=" + itoa(first+second) + "-"}
			if !slices.Equal(got, want) {
				t.Errorf("Range headers %q, want %q", got, want)
			}
			checkDisk(t, path, fx.data)
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestWriteResumesAfterStall(t *testing.T) {
	fx := newFixture(t, imageSize)
	fx.drop.hang = true
	fx.drop.cutNext(2 << 20)
	dst, path := newTarget(t, TargetOptions{})
	retry := fastRetry()
	retry.Stall = 200 * time.Millisecond
	res, err := Write(testCtx(t), fx.source(t, FormatGzip), dst, Options{Retry: retry})
	if err != nil {
		t.Fatal(err)
	}
	if res.Retries < 1 { // more only if a loaded machine pauses a transfer for 200ms
		t.Errorf("retries = %d, want the hung connection resumed", res.Retries)
	}
	checkDisk(t, path, fx.data)
}

func TestWriteCancelled(t *testing.T) {
	fx := newFixture(t, imageSize)
	dst, _ := newTarget(t, TargetOptions{})
	ctx, cancel := context.WithCancel(testCtx(t))
	gate := make(chan struct{})
	close(gate)
	disk := &gatedDisk{File: dst, gate: gate, before: cancel}
	_, err := Write(ctx, fx.source(t, FormatZstd), disk, Options{ChunkSize: 1 << 20})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestOpenTargetDoesNotCreateByDefault(t *testing.T) {
	if _, err := OpenTarget(filepath.Join(t.TempDir(), "sdz"), TargetOptions{}); err == nil {
		t.Fatal("opened a missing device path")
	}
}

func TestWriteGivesUpAfterRetries(t *testing.T) {
	fx := newFixture(t, imageSize)
	fx.drop.cutNext(1000, 0, 0, 0, 0)
	dst, _ := newTarget(t, TargetOptions{})
	_, err := Write(testCtx(t), fx.source(t, FormatZstd), dst, Options{Retry: fastRetry()})
	if !errors.Is(err, ErrDownload) {
		t.Fatalf("err = %v, want ErrDownload", err)
	}
}

func TestWriteRefusesChangedImageOnResume(t *testing.T) {
	fx := newFixture(t, imageSize)
	src := fx.source(t, FormatRaw)
	// The first response is cut; before the resume the file is replaced.
	fx.drop.h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			future := time.Now().Add(time.Hour)
			os.Chtimes(filepath.Join(fx.dir, "test.img"), future, future)
		}
		fx.cat.Handler().ServeHTTP(w, r)
	})
	fx.drop.cutNext(1 << 20)
	dst, _ := newTarget(t, TargetOptions{})
	_, err := Write(testCtx(t), src, dst, Options{Retry: fastRetry()})
	if !errors.Is(err, ErrDownload) {
		t.Fatalf("err = %v, want ErrDownload (image changed)", err)
	}
}

func TestWriteFailures(t *testing.T) {
	fx := newFixture(t, imageSize)
	// Truncated files, served whole: the server is happy, the image is not.
	for _, f := range []Format{FormatRaw, FormatZstd, FormatGzip, FormatXz} {
		b, err := os.ReadFile(filepath.Join(fx.dir, "test"+ext[f]))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(fx.dir, "short"+ext[f]), b[:len(b)*2/3], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	corrupt, _ := os.ReadFile(filepath.Join(fx.dir, "test.img.gz"))
	corrupt[len(corrupt)/2] ^= 0xff
	os.WriteFile(filepath.Join(fx.dir, "corrupt.img.gz"), corrupt, 0o644)

	good := func(f Format) Source { return fx.source(t, f) }
	with := func(s Source, edit func(*Source)) Source { edit(&s); return s }
	short := func(f Format) Source {
		return with(good(f), func(s *Source) { s.URL = fx.srv.URL + "/short" + ext[f] })
	}
	tests := []struct {
		name string
		src  Source
		want error
	}{
		{"checksum raw", with(good(FormatRaw), func(s *Source) { s.SHA256 = sum([]byte("other")) }), ErrChecksum},
		{"checksum zst", with(good(FormatZstd), func(s *Source) { s.SHA256 = sum([]byte("other")) }), ErrChecksum},
		{"truncated raw", short(FormatRaw), ErrShortImage},
		{"truncated zst", short(FormatZstd), ErrShortImage},
		{"truncated gz", short(FormatGzip), ErrShortImage},
		{"truncated xz", short(FormatXz), ErrShortImage},
		{"catalog size too big", with(good(FormatZstd), func(s *Source) { s.Size++ }), ErrShortImage},
		{"catalog size too small", with(good(FormatZstd), func(s *Source) { s.Size-- }), ErrLongImage},
		{"raw longer than catalog", with(good(FormatRaw), func(s *Source) { s.Size -= 5000 }), ErrLongImage},
		{"corrupt gz", with(good(FormatGzip), func(s *Source) { s.URL = fx.srv.URL + "/corrupt.img.gz" }), ErrCorrupt},
		{"wrong format", with(good(FormatGzip), func(s *Source) { s.Format = FormatZstd }), ErrCorrupt},
		{"missing", with(good(FormatRaw), func(s *Source) { s.URL = fx.srv.URL + "/nope.img" }), ErrNotFound},
		{"no sha256", with(good(FormatRaw), func(s *Source) { s.SHA256 = "" }), ErrInvalidSource},
		{"no size", with(good(FormatRaw), func(s *Source) { s.Size = 0 }), ErrInvalidSource},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst, _ := newTarget(t, TargetOptions{})
			var last Progress
			_, err := Write(testCtx(t), tt.src, dst, Options{Retry: fastRetry(), Progress: func(p Progress) { last = p }})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if r := Reason(err); r == "" || r == "failed" {
				t.Errorf("Reason(%v) = %q", err, r)
			}
			if last.Stage == StageDone {
				t.Errorf("progress claims done after %v", err)
			}
		})
	}
}

func TestWriteImageBiggerThanTarget(t *testing.T) {
	fx := newFixture(t, imageSize)
	path := filepath.Join(t.TempDir(), "small-disk")
	if err := os.WriteFile(path, make([]byte, imageSize-1), 0o644); err != nil {
		t.Fatal(err)
	}
	dst, err := OpenTarget(path, TargetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	n := len(fx.drop.requests())
	_, err = Write(testCtx(t), fx.source(t, FormatZstd), dst, Options{})
	if !errors.Is(err, ErrTooLarge) || Reason(err) != "image_too_large" {
		t.Fatalf("err = %v (%s), want ErrTooLarge", err, Reason(err))
	}
	if len(fx.drop.requests()) != n {
		t.Error("downloaded an image that cannot fit")
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, make([]byte, imageSize-1)) {
		t.Error("target was written")
	}
}

// flakyDisk returns success for every write but stores one byte wrong, the
// silent corruption only a read-back catches.
type flakyDisk struct {
	*File
	once sync.Once
}

func (d *flakyDisk) WriteAt(p []byte, off int64) (int, error) {
	if off > 0 {
		d.once.Do(func() {
			q := slices.Clone(p)
			q[len(q)/2] ^= 1
			p = q
		})
	}
	return d.File.WriteAt(p, off)
}

func TestWriteReadBackMismatch(t *testing.T) {
	fx := newFixture(t, imageSize)
	dst, _ := newTarget(t, TargetOptions{})
	_, err := Write(testCtx(t), fx.source(t, FormatZstd), &flakyDisk{File: dst}, Options{})
	if !errors.Is(err, ErrReadBack) {
		t.Fatalf("err = %v, want ErrReadBack", err)
	}
}

type failingDisk struct{ *File }

func (failingDisk) WriteAt([]byte, int64) (int, error) { return 0, errors.New("EIO") }

func TestWriteTargetError(t *testing.T) {
	fx := newFixture(t, imageSize)
	dst, _ := newTarget(t, TargetOptions{})
	_, err := Write(testCtx(t), fx.source(t, FormatZstd), failingDisk{dst}, Options{})
	if !errors.Is(err, ErrWrite) {
		t.Fatalf("err = %v, want ErrWrite", err)
	}
}

func TestWriteProgress(t *testing.T) {
	fx := newFixture(t, imageSize)
	dst, _ := newTarget(t, TargetOptions{})
	// Each chunk waits for a tick, so the streaming stage spans several ticks.
	ticks := make(chan struct{}, 1)
	slow := &gatedDisk{File: dst, gate: ticks}
	var got []Progress
	_, err := Write(testCtx(t), fx.source(t, FormatZstd), slow, Options{
		ChunkSize:        1 << 20,
		InFlight:         1,
		ProgressInterval: 5 * time.Millisecond,
		Progress: func(p Progress) {
			got = append(got, p)
			select {
			case ticks <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var stages []Stage
	var midway bool
	for _, p := range got {
		if len(stages) == 0 || stages[len(stages)-1] != p.Stage {
			stages = append(stages, p.Stage)
		}
		if p.Stage == StageDownloading && p.Done > 0 && p.Done < p.Total && p.Rate > 0 && p.ETA > 0 {
			midway = true
		}
	}
	if want := []Stage{StageDownloading, StageSyncing, StageVerifying, StageDone}; !slices.Equal(stages, want) {
		t.Errorf("stages %v, want %v", stages, want)
	}
	if !midway {
		t.Errorf("no progress report with rate and ETA while writing: %+v", got)
	}
	last := got[len(got)-1]
	if last.Done != int64(len(fx.data)) || last.Total != last.Done || last.Downloaded == 0 {
		t.Errorf("last progress %+v", last)
	}
}

// gatedDisk lets one write through per progress report.
type gatedDisk struct {
	*File
	gate   chan struct{}
	before func() // called before each write
}

func (d *gatedDisk) WriteAt(p []byte, off int64) (int, error) {
	if d.before != nil {
		d.before()
	}
	<-d.gate
	return d.File.WriteAt(p, off)
}

func TestProgressString(t *testing.T) {
	p := Progress{Stage: StageDownloading, Done: 451 << 20, Total: 1 << 30, Rate: 310e6, ETA: 1900 * time.Millisecond, Retries: 1}
	if got, want := p.String(), "downloading 44.0% (451 MiB of 1.0 GiB) 310 MB/s, ETA 2s, 1 resumed"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
