package images

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"time"
)

// Handler serves the images directory over HTTP: GET and HEAD of /NAME with
// Range and If-Range (http.ServeContent), for plain file names only. Mount it
// with http.StripPrefix, e.g. mux.Handle("/images/", http.StripPrefix("/images", c.Handler())).
// Files are opened through os.Root, so neither ".." nor a symlink can
// reach outside the directory.
func (c *Catalog) Handler() http.Handler { return c.HandlerRate(0) }

// HandlerRate is Handler with each response paced to at most bytesPerSecond (0: no
// limit), so image streams leave room on a shared boot network.
func (c *Catalog) HandlerRate(bytesPerSecond int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if bytesPerSecond > 0 {
			w = &pacedWriter{ResponseWriter: w, ctx: r.Context(), rate: bytesPerSecond, start: time.Now()}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/")
		if !validName(name) {
			http.Error(w, "bad image name", http.StatusBadRequest)
			return
		}
		root, err := os.OpenRoot(c.dir)
		if err != nil {
			c.log.Error("images dir unavailable", "dir", c.dir, "err", err)
			http.Error(w, "images unavailable", http.StatusInternalServerError)
			return
		}
		defer root.Close()
		f, err := root.Open(name)
		if err != nil {
			status := http.StatusNotFound
			if !errors.Is(err, fs.ErrNotExist) {
				c.log.Warn("image open refused", "name", name, "err", err)
				status = http.StatusForbidden
			}
			http.Error(w, http.StatusText(status), status)
			return
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		// A strong validator lets a resuming agent's If-Range detect a replaced
		// image (same name, new content) instead of splicing the two.
		w.Header().Set("ETag", fmt.Sprintf(`"%x-%x"`, fi.Size(), fi.ModTime().UnixNano()))
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, name, fi.ModTime(), f)
	})
}

// pacedWriter holds writes back so that no more than rate bytes per second leave
// since start. It hides http.ResponseWriter's ReaderFrom (sendfile), which would
// bypass the pacing.
type pacedWriter struct {
	http.ResponseWriter
	ctx   context.Context
	rate  int64
	start time.Time
	sent  int64
}

// pacedChunk keeps each write short so the pace is smooth.
const pacedChunk = 32 << 10

func (p *pacedWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		n := min(len(b), pacedChunk)
		due := p.start.Add(time.Duration(float64(p.sent+int64(n)) / float64(p.rate) * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-p.ctx.Done():
				t.Stop()
				return written, p.ctx.Err()
			case <-t.C:
			}
		}
		m, err := p.ResponseWriter.Write(b[:n])
		written += m
		p.sent += int64(m)
		if err != nil {
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}
