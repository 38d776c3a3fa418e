package images

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"lpmos.dev/lpmos/contract"
)

func TestCatalogMissingIndexIsEmpty(t *testing.T) {
	c, err := OpenCatalog(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got := c.List(); len(got) != 0 {
		t.Errorf("List() = %v", got)
	}
	if _, ok := c.Lookup(contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}); ok {
		t.Error("found an image in an empty catalog")
	}
	if _, err := OpenCatalog(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Error("opened a missing directory")
	}
}

func TestCatalogReloadsAndKeepsLastGoodIndex(t *testing.T) {
	dir := t.TempDir()
	writer, err := OpenCatalog(dir)
	if err != nil {
		t.Fatal(err)
	}
	reader, err := OpenCatalog(dir) // the appliance, opened before the add
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "debian-12.img")
	os.WriteFile(img, []byte("not much of a disk"), 0o644)
	e, err := writer.Add(t.Context(), contract.OSRef{OSType: "Debian", OSVersion: "12"}, img, FormatRaw)
	if err != nil {
		t.Fatal(err)
	}
	if e.Size != 18 || e.CompressedSize != 18 || e.SHA256 != sum([]byte("not much of a disk")) {
		t.Errorf("entry %+v", e)
	}
	if _, err := os.Stat(filepath.Join(dir, "debian-12.img")); err != nil {
		t.Errorf("image not copied into the dir: %v", err)
	}
	got, ok := reader.Lookup(contract.OSRef{OSType: "debian", OSVersion: "12"})
	if !ok || got.File != "debian-12.img" {
		t.Fatalf("Lookup after add: %+v %v", got, ok)
	}
	if src := got.Source("http://10.0.0.1:8081/images/"); src.URL != "http://10.0.0.1:8081/images/debian-12.img" || src.Size != 18 {
		t.Errorf("Source = %+v", src)
	}
	// A broken index (an operator's editor mid-save) does not empty the catalog.
	os.WriteFile(filepath.Join(dir, IndexFile), []byte(`{"images": [`), 0o644)
	if _, ok := reader.Lookup(contract.OSRef{OSType: "debian", OSVersion: "12"}); !ok {
		t.Error("lost the catalog on a broken index")
	}
	// Nor does an entry that points outside the directory get in.
	os.WriteFile(filepath.Join(dir, IndexFile), []byte(`{"images":[{"os_type":"x","os_version":"1","file":"../etc/passwd","format":"raw","size":1,"sha256":"00"}]}`), 0o644)
	if _, ok := reader.Lookup(contract.OSRef{OSType: "x", OSVersion: "1"}); ok {
		t.Error("accepted an entry with a path outside the dir")
	}
}

func TestCatalogConcurrentAddsKeepEveryEntry(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		wg.Go(func() {
			// Separate Catalog values, like separate lpmos-image processes.
			c, err := OpenCatalog(dir)
			if err != nil {
				errs <- err
				return
			}
			name := filepath.Join(dir, fmt.Sprintf("os-%d.img", i))
			os.WriteFile(name, []byte{byte(i)}, 0o644)
			_, err = c.Add(t.Context(), contract.OSRef{OSType: "os", OSVersion: strconv.Itoa(i)}, name, FormatRaw)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c, _ := OpenCatalog(dir)
	if got := len(c.List()); got != 6 {
		t.Errorf("%d entries after 6 concurrent adds", got)
	}
}
