package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images/seed"
)

// IndexFile is the catalog's index inside the images directory.
const IndexFile = "catalog.json"

// Entry is one image in the catalog.
type Entry struct {
	contract.OSRef
	File           string `json:"file"` // plain name inside the images directory
	Format         Format `json:"format"`
	CompressedSize int64  `json:"compressed_size"` // bytes of File
	Size           int64  `json:"size"`            // decompressed bytes
	SHA256         string `json:"sha256"`          // of the decompressed image
	// Layout is the image's partition table, read while it was hashed: a plan
	// places a cloud-init seed after it (images/seed).
	Layout *contract.ImageLayout `json:"layout,omitempty"`
	Added  time.Time             `json:"added,omitzero"`
}

// Source is what the agent needs to write e, served from baseURL (the URL
// the images Handler is mounted at, e.g. "http://10.0.0.1:8081/images/").
func (e Entry) Source(baseURL string) Source {
	return Source{
		URL:    strings.TrimSuffix(baseURL, "/") + "/" + url.PathEscape(e.File),
		Format: e.Format,
		Size:   e.Size,
		SHA256: e.SHA256,
	}
}

// index is the JSON layout of IndexFile.
type index struct {
	Images []Entry `json:"images"`
}

// Catalog is the images directory and its index. It re-reads the index
// when the file changes, so `lpmos-image add` on a running appliance takes
// effect without a restart. Safe for concurrent use.
type Catalog struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex
	stamp   string // size and mtime of the index last read
	entries []Entry
}

// OpenCatalog opens the catalog in dir. A directory without an index is an
// empty catalog (operators create tasks before they upload images).
func OpenCatalog(dir string) (*Catalog, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("images dir: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("images dir %s: not a directory", dir)
	}
	c := &Catalog{dir: dir, log: slog.Default()}
	if err := c.refresh(); err != nil {
		return nil, err
	}
	return c, nil
}

// Dir is the images directory.
func (c *Catalog) Dir() string { return c.dir }

// Lookup finds the image for an OS; names compare case-insensitively.
func (c *Catalog) Lookup(ref contract.OSRef) (Entry, bool) {
	for _, e := range c.List() {
		if e.Is(ref) {
			return e, true
		}
	}
	return Entry{}, false
}

// List returns every entry, sorted by OS type and version.
func (c *Catalog) List() []Entry {
	if err := c.refresh(); err != nil {
		// Keep serving the last good index: a half-edited file must not
		// make a region forget its images.
		c.log.Warn("image catalog unreadable, using last good index", "dir", c.dir, "err", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.entries)
}

func (c *Catalog) refresh() error {
	path := filepath.Join(c.dir, IndexFile)
	fi, err := os.Stat(path)
	stamp := ""
	if err == nil {
		stamp = fmt.Sprintf("%d/%d", fi.Size(), fi.ModTime().UnixNano())
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("catalog index: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if stamp == c.stamp && c.entries != nil {
		return nil
	}
	entries, err := readIndex(path)
	if err != nil {
		return err
	}
	c.stamp, c.entries = stamp, entries
	return nil
}

func readIndex(path string) ([]Entry, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return []Entry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("catalog index: %w", err)
	}
	var ix index
	if err := json.Unmarshal(b, &ix); err != nil {
		return nil, fmt.Errorf("catalog index %s: %w", path, err)
	}
	for i, e := range ix.Images {
		if !validName(e.File) {
			return nil, fmt.Errorf("catalog index %s: entry %d: bad file name %q", path, i, e.File)
		}
	}
	sortEntries(ix.Images)
	return ix.Images, nil
}

func sortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int {
		if c := strings.Compare(a.OSType, b.OSType); c != 0 {
			return c
		}
		return strings.Compare(a.OSVersion, b.OSVersion)
	})
}

// Add registers the image at path for os, replacing any entry for that OS. A file outside the images directory is copied in first.
// It decompresses the whole image to measure and hash it, then rewrites the
// index atomically (temp file + rename), so readers never see half an index.
func (c *Catalog) Add(ctx context.Context, ref contract.OSRef, path string, format Format) (Entry, error) {
	if err := ref.Validate(); err != nil { // the same rule task creation applies
		return Entry{}, fmt.Errorf("add image: %w", err)
	}
	name := filepath.Base(path)
	if !validName(name) || name == IndexFile {
		return Entry{}, fmt.Errorf("add image: bad file name %q", name)
	}
	if _, err := ParseFormat(string(format)); err != nil {
		return Entry{}, fmt.Errorf("add image: %w", err)
	}
	inDir, err := sameDir(filepath.Dir(path), c.dir)
	if err != nil {
		return Entry{}, fmt.Errorf("add image: %w", err)
	}
	if !inDir {
		if err := copyInto(path, c.dir, name); err != nil {
			return Entry{}, fmt.Errorf("add image: %w", err)
		}
	}
	e := Entry{OSRef: ref, File: name, Format: format, Added: time.Now().UTC()}
	if err := measure(ctx, filepath.Join(c.dir, name), &e); err != nil {
		if !inDir {
			os.Remove(filepath.Join(c.dir, name)) // our copy of a file we refuse
		}
		return Entry{}, fmt.Errorf("add image %s: %w", name, err)
	}

	unlock, err := lockDir(c.dir)
	if err != nil {
		return Entry{}, fmt.Errorf("add image: lock catalog: %w", err)
	}
	defer unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	entries, err := readIndex(filepath.Join(c.dir, IndexFile))
	if err != nil {
		return Entry{}, err
	}
	entries = slices.DeleteFunc(entries, func(x Entry) bool {
		return x.Is(ref)
	})
	entries = append(entries, e)
	sortEntries(entries)
	if err := writeIndex(c.dir, entries); err != nil {
		return Entry{}, err
	}
	c.stamp, c.entries = "", nil // force a re-read, the file is the truth
	return e, nil
}

// measure fills in the sizes and the sha256 of the decompressed image.
func measure(ctx context.Context, path string, e *Entry) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	e.CompressedSize = fi.Size()
	dec, closeDec, err := decompressor(e.Format, f)
	if err != nil {
		return err
	}
	defer closeDec()
	h := sha256.New()
	var layout seed.Scanner
	n, err := io.Copy(io.MultiWriter(h, &layout), ctxReader{ctx, dec})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return decodeErr(e.Format, err)
	}
	e.Size, e.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	// An unreadable table is no reason to refuse the image: it installs, and a plan
	// with a seed says the layout is unknown.
	if l, err := layout.Layout(); err == nil {
		e.Layout = &l
	}
	return nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func writeIndex(dir string, entries []Entry) error {
	b, err := json.MarshalIndent(index{Images: entries}, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(dir, IndexFile, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
}

// writeAtomic writes dir/name through a hidden temp file and a rename, with
// fsyncs so a crash leaves the old or the new file, never a torn one.
func writeAtomic(dir, name string, fill func(io.Writer) error) error {
	tmp, err := os.CreateTemp(dir, "."+name+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := fill(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func copyInto(src, dir, name string) error {
	if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
		return fmt.Errorf("%s already exists in %s: add that file, or rename", name, dir)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeAtomic(dir, name, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

func sameDir(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}

// validName accepts a plain file name inside the images directory: no
// path separators, no "..", no hidden files (temp files are hidden).
func validName(name string) bool {
	return name != "" && !strings.HasPrefix(name, ".") && !strings.ContainsAny(name, "/\\\x00") && len(name) <= 255
}
