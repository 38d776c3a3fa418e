package images

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strings"
)

// Handler serves the images directory over HTTP: GET and HEAD of /NAME with
// Range and If-Range (http.ServeContent), for plain file names only. Mount it
// with http.StripPrefix, e.g. mux.Handle("/images/", http.StripPrefix("/images", c.Handler())).
// Files are opened through os.Root, so neither ".." nor a symlink can
// reach outside the directory.
func (c *Catalog) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
