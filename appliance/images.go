package appliance

import (
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"lpmos.dev/lpmos/appliance/regionapi"
)

// imageCatalog resolves (os_type, os_version) to a file in --images-dir.
// Until the images catalog lands, a file named <os_type>-<os_version>.<ext> is the
// image, the extension naming the format (.img/.raw, .gz, .zst, .xz).
type imageCatalog struct{ dir string }

func newImageCatalog(dir string) *imageCatalog { return &imageCatalog{dir: dir} }

var formatByExt = map[string]string{".img": "raw", ".raw": "raw", ".gz": "gz", ".zst": "zst", ".xz": "xz"}

func (c *imageCatalog) lookup(osType, osVersion string) (regionapi.Image, bool) {
	base := osType + "-" + osVersion
	for ext, format := range formatByExt {
		name := base + ext
		if strings.ContainsAny(name, "/\\") {
			return regionapi.Image{}, false
		}
		if st, err := os.Stat(filepath.Join(c.dir, name)); err == nil && st.Mode().IsRegular() {
			return regionapi.Image{URL: name, Format: format}, true
		}
	}
	return regionapi.Image{}, false
}

func (c *imageCatalog) names() []string {
	ents, _ := os.ReadDir(c.dir)
	var out []string
	for _, e := range ents {
		if _, ok := formatByExt[filepath.Ext(e.Name())]; ok {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// handler serves the images dir with Range support; http.Dir refuses paths outside it.
func (c *imageCatalog) handler() http.Handler { return http.FileServer(http.Dir(c.dir)) }
