package ipxe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"lpmos.dev/lpmos/netboot"
)

// Config configures Handler.
type Config struct {
	Booter netboot.Booter
	// BaseURL is where machines reach this handler, e.g.
	// "http://10.77.0.1:8081". Empty: taken from each request's Host, which
	// is the address iPXE itself used.
	BaseURL string
	// Files maps the names a Plan uses (Kernel, Initrds) to paths on disk
	// (--kernel, --initramfs). Only these names are served.
	Files map[string]string
	// Binaries are the iPXE binaries for UEFI HTTP boot (Binaries() or
	// BinariesDir). Nil: none served.
	Binaries fs.FS
	Logger   *slog.Logger
}

// Handler serves the iPXE bootstrap, per-machine scripts, boot files and
// iPXE binaries. The appliance mounts it on its API mux:
//
//	mux.Handle("/boot.ipxe", h)
//	mux.Handle("/boot/", h)
//	mux.Handle("/ipxe/", h)
type Handler struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux
}

// NewHandler checks cfg and returns the handler.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.Booter == nil {
		return nil, errors.New("ipxe: handler needs a Booter")
	}
	if cfg.BaseURL != "" {
		if err := checkURL("base URL", cfg.BaseURL); err != nil {
			return nil, err
		}
	}
	for name := range cfg.Files {
		if !isPlainName(name) || checkWord("file name", name) != nil {
			return nil, fmt.Errorf("ipxe: file name %q must be a plain word", name)
		}
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.mux.HandleFunc("GET "+PathBootstrap, h.serveBootstrap)
	h.mux.HandleFunc("GET "+pathScripts+"{script}", h.serveScript)
	h.mux.HandleFunc("GET "+PathFiles+"{name}", h.serveFile)
	h.mux.HandleFunc("GET "+PathBinaries+"{name}", h.serveBinary)
	return h, nil
}

// ServeHTTP routes to the bootstrap, scripts, boot files and binaries.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) base(r *http.Request) (string, error) {
	if h.cfg.BaseURL != "" {
		return h.cfg.BaseURL, nil
	}
	if r.Host == "" {
		return "", errors.New("request without Host")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	base := scheme + "://" + r.Host
	return base, checkURL("request host", base)
}

func (h *Handler) serveBootstrap(w http.ResponseWriter, r *http.Request) {
	// Query form for firmware that cannot put the MAC into a path:
	// /boot.ipxe?mac=52-54-00-12-34-56&arch=x86_64&platform=efi
	if r.URL.Query().Has("mac") {
		h.serveMachine(w, r, r.URL.Query().Get("mac"))
		return
	}
	base, err := h.base(r)
	if err != nil {
		http.Error(w, "bad host", http.StatusBadRequest)
		return
	}
	var buf bytes.Buffer
	if err := RenderBootstrap(&buf, base); err != nil {
		h.log.Error("render bootstrap", "err", err)
		http.Error(w, "cannot render script", http.StatusInternalServerError)
		return
	}
	writeScript(w, buf.Bytes())
}

func (h *Handler) serveScript(w http.ResponseWriter, r *http.Request) {
	mac, ok := strings.CutSuffix(r.PathValue("script"), ".ipxe")
	if !ok {
		http.NotFound(w, r)
		return
	}
	h.serveMachine(w, r, mac)
}

// factRE matches iPXE's ${buildarch} and ${platform}: short lower-case words.
var factRE = regexp.MustCompile(`^[a-z0-9_]{0,16}$`)

func (h *Handler) serveMachine(w http.ResponseWriter, r *http.Request, macText string) {
	mac, err := net.ParseMAC(macText)
	if err != nil || len(mac) != 6 {
		http.Error(w, "bad MAC", http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	arch, platform := q.Get("arch"), q.Get("platform")
	if !factRE.MatchString(arch) || !factRE.MatchString(platform) {
		http.Error(w, "bad arch or platform", http.StatusBadRequest)
		return
	}
	log := h.log.With("mac", mac.String(), "client", r.RemoteAddr)
	m := netboot.Machine{MAC: mac, Arch: arch, Firmware: platform, Stage: netboot.StageScript}
	plan, err := h.cfg.Booter.Boot(r.Context(), m)
	if err != nil {
		log.Error("boot script: booter failed", "err", err)
		http.Error(w, "cannot decide what to boot", http.StatusServiceUnavailable)
		return
	}
	if plan == nil {
		log.Info("boot script: machine not ours, no script")
		http.NotFound(w, r)
		return
	}
	base, err := h.base(r)
	if err != nil {
		http.Error(w, "bad host", http.StatusBadRequest)
		return
	}
	var buf bytes.Buffer
	if err := RenderPlan(&buf, base, mac, plan); err != nil {
		log.Error("boot script: refusing plan", "err", err)
		http.Error(w, "cannot render script", http.StatusInternalServerError)
		return
	}
	log.Info("boot script served", "task", plan.TaskID, "local_disk", plan.LocalDisk, "arch", arch, "platform", platform)
	writeScript(w, buf.Bytes())
}

func writeScript(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store") // the plan changes with the task
	w.Write(b)
}

func (h *Handler) serveFile(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p, ok := h.cfg.Files[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	f, err := os.Open(p)
	if err != nil {
		h.log.Error("boot file", "name", name, "err", err)
		http.Error(w, "boot file unavailable", http.StatusServiceUnavailable)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.Error(w, "boot file unavailable", http.StatusServiceUnavailable)
		return
	}
	h.serveContent(w, r, name, st.ModTime(), f, st.Size())
}

func (h *Handler) serveBinary(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if h.cfg.Binaries == nil {
		http.NotFound(w, r)
		return
	}
	f, err := h.cfg.Binaries.Open(name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	rs, ok := f.(io.ReadSeeker)
	if err != nil || !ok {
		http.Error(w, "binary unavailable", http.StatusServiceUnavailable)
		return
	}
	h.serveContent(w, r, name, st.ModTime(), rs, st.Size())
}

// serveContent answers Range requests (http.ServeContent) and logs each
// transfer once.
func (h *Handler) serveContent(w http.ResponseWriter, r *http.Request, name string, mod time.Time, rs io.ReadSeeker, size int64) {
	start := time.Now()
	cw := &countWriter{ResponseWriter: w}
	http.ServeContent(cw, r, name, mod, rs)
	h.log.Info("boot file served", "file", name, "client", r.RemoteAddr, "range", r.Header.Get("Range"),
		"bytes", cw.n, "size", size, "duration", time.Since(start).Round(time.Millisecond))
}

type countWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}
