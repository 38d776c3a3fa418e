package kmod

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// fakeKO returns a minimal relocatable ELF64 whose only content is a .modinfo section
// holding kv ("key=value" strings), which is all ReadInfo looks at.
func fakeKO(t *testing.T, kv ...string) []byte {
	t.Helper()
	modinfo := []byte(strings.Join(kv, "\x00") + "\x00")
	shstrtab := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(len(modinfo))
	shOff := (strOff + uint64(len(shstrtab)) + 7) &^ 7
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	b.Write(modinfo)
	b.Write(shstrtab)
	b.Write(make([]byte, shOff-uint64(b.Len())))
	for _, s := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Off: infoOff, Size: uint64(len(modinfo)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(shstrtab)), Addralign: 1},
	} {
		binary.Write(&b, binary.LittleEndian, s)
	}
	return b.Bytes()
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func xzBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := xz.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// fakeModules lays out a small virtio-like module tree: virtio_net needs virtio and
// virtio_ring; virtio_pci is the bus driver; virtio-rng has a dash in its file name.
func fakeModules(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	k := filepath.Join(dir, "kernel", "drivers")
	writeFile(t, filepath.Join(k, "virtio", "virtio_ring.ko"), fakeKO(t, "name=virtio_ring", "depends="))
	writeFile(t, filepath.Join(k, "virtio", "virtio.ko"), fakeKO(t, "name=virtio", "depends=virtio_ring"))
	writeFile(t, filepath.Join(k, "virtio", "virtio_pci.ko"), fakeKO(t, "name=virtio_pci", "depends=virtio_ring,virtio",
		"alias=pci:v00001AF4d*sv*sd*bc*sc*i*"))
	writeFile(t, filepath.Join(k, "net", "net_failover.ko"), fakeKO(t, "name=net_failover", "depends="))
	writeFile(t, filepath.Join(k, "net", "virtio_net.ko.xz"), xzBytes(t, fakeKO(t, "name=virtio_net",
		"depends=virtio_ring,virtio,net_failover", "alias=virtio:d00000001v*")))
	writeFile(t, filepath.Join(k, "char", "virtio-rng.ko"), fakeKO(t, "name=virtio_rng", "depends=virtio_ring,virtio",
		"alias=virtio:d00000004v*", "softdep=pre: absent_helper"))
	writeFile(t, filepath.Join(k, "net", "e1000.ko"), fakeKO(t, "name=e1000", "depends=", "alias=pci:v00008086d0000100Esv*sd*bc*sc*i*"))
	return dir
}

func TestReadInfo(t *testing.T) {
	dir := fakeModules(t)
	info, err := ReadInfo(filepath.Join(dir, "kernel", "drivers", "net", "virtio_net.ko.xz"))
	if err != nil {
		t.Fatal(err)
	}
	want := Info{Name: "virtio_net", Depends: []string{"virtio_ring", "virtio", "net_failover"}, Aliases: []string{"virtio:d00000001v*"}}
	if !reflect.DeepEqual(info, want) {
		t.Errorf("ReadInfo = %+v, want %+v", info, want)
	}
	if got := parseSoftdepPre("pre: crc32c xxhash post: foo"); !reflect.DeepEqual(got, []string{"crc32c", "xxhash"}) {
		t.Errorf("softdep pre = %v", got)
	}
}

// TestRealModule reads a module of the Debian kernel when scripts/fetch-kernel.sh has
// fetched it: the fake ELF above must not be the only thing the parser understands.
func TestRealModule(t *testing.T) {
	ko, _ := filepath.Glob("../../build/kernel/current/lib/modules/*/kernel/drivers/net/virtio_net.ko*")
	if len(ko) == 0 {
		t.Skip("no fetched kernel (scripts/fetch-kernel.sh): skipping real-module check")
	}
	info, err := ReadInfo(ko[0])
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "virtio_net" || !slices.Contains(info.Depends, "virtio") || !slices.Contains(info.Aliases, "virtio:d00000001v*") {
		t.Errorf("virtio_net modinfo = %+v", info)
	}
}

func TestIndexMatchAndClosure(t *testing.T) {
	ix, err := Open(fakeModules(t))
	if err != nil {
		t.Fatal(err)
	}
	for alias, want := range map[string][]string{
		"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00": {"virtio_pci"},
		"virtio:d00000004v00001AF4":                             {"virtio_rng"},
		"pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00": nil,
	} {
		if got := ix.Match(alias); !reflect.DeepEqual(got, want) {
			t.Errorf("Match(%s) = %v, want %v", alias, got, want)
		}
	}
	order, err := ix.Closure("virtio_net", "virtio-rng")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio", "net_failover", "virtio_net", "virtio_rng"}
	if !reflect.DeepEqual(order, want) {
		t.Errorf("Closure = %v, want %v", order, want)
	}
	if _, err := ix.Closure("nvme"); err == nil {
		t.Error("Closure of a missing module: want error")
	}
}

func TestBundleWritesAliases(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "mods")
	order, err := Bundle(fakeModules(t), dst, []string{"virtio_net"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"virtio_ring", "virtio", "net_failover", "virtio_net"}; !reflect.DeepEqual(order, want) {
		t.Errorf("Bundle order = %v, want %v", order, want)
	}
	alias, err := os.ReadFile(filepath.Join(dst, AliasFile))
	if err != nil {
		t.Fatal(err)
	}
	if string(alias) != "alias virtio:d00000001v* virtio_net\n" {
		t.Errorf("modules.alias = %q", alias)
	}
	ix, err := Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	if got := ix.Match("virtio:d00000001v00001AF4"); !reflect.DeepEqual(got, []string{"virtio_net"}) {
		t.Errorf("bundled Match = %v", got)
	}
}

// fakeSys is a /sys tree whose devices bind when the fake kernel loads their driver.
type fakeSys struct {
	t      *testing.T
	root   string
	loaded []string
	params map[string]string
}

func (f *fakeSys) device(bus, name, modalias string) string {
	d := filepath.Join(f.root, "bus", bus, "devices", name)
	writeFile(f.t, filepath.Join(d, "modalias"), []byte(modalias+"\n"))
	return d
}

func (f *fakeSys) bind(dev, driver string) {
	if err := os.Symlink(filepath.Join("..", "..", "bus", "drivers", driver), filepath.Join(dev, "driver")); err != nil {
		f.t.Fatal(err)
	}
}

// insert plays the kernel: virtio_pci binds the virtio PCI functions and creates the
// virtio bus devices behind them; virtio_net and virtio_rng bind theirs.
func (f *fakeSys) insert(path, params string) error {
	name := Normalize(filepath.Base(path))
	f.loaded = append(f.loaded, name)
	if f.params == nil {
		f.params = map[string]string{}
	}
	f.params[name] = params
	if err := os.MkdirAll(filepath.Join(f.root, "module", name), 0o755); err != nil {
		return err
	}
	switch name {
	case "virtio_pci":
		f.bind(filepath.Join(f.root, "bus", "pci", "devices", "0000:00:03.0"), "virtio-pci")
		f.bind(filepath.Join(f.root, "bus", "pci", "devices", "0000:00:04.0"), "virtio-pci")
		f.device("virtio", "virtio0", "virtio:d00000001v00001AF4")
		f.device("virtio", "virtio1", "virtio:d00000004v00001AF4")
	case "virtio_net":
		f.bind(filepath.Join(f.root, "bus", "virtio", "devices", "virtio0"), "virtio_net")
	case "virtio_rng":
		f.bind(filepath.Join(f.root, "bus", "virtio", "devices", "virtio1"), "virtio_rng")
	}
	return nil
}

func TestLoadForDevices(t *testing.T) {
	ix, err := Open(fakeModules(t))
	if err != nil {
		t.Fatal(err)
	}
	sys := &fakeSys{t: t, root: t.TempDir()}
	sys.device("pci", "0000:00:00.0", "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00") // host bridge: never reported
	sys.device("pci", "0000:00:03.0", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
	sys.device("pci", "0000:00:04.0", "pci:v00001AF4d00001005sv00001AF4sd00000004bcFFscFFi00")
	sys.device("pci", "0000:00:05.0", "pci:v000015B3d00001017sv000015B3sd00000001bc02sc00i00") // mlx5: not shipped
	sys.device("acpi", "PNP0501:00", "acpi:PNP0501:")
	// Already loaded before the agent ran: must not be inserted again.
	os.MkdirAll(filepath.Join(sys.root, "module", "virtio_ring"), 0o755)

	l := NewLoader(ix, slog.New(slog.NewTextHandler(io.Discard, nil)))
	l.SysRoot = sys.root
	l.Insert = sys.insert
	l.Params = map[string]string{"virtio_net": "napi_tx=1"}
	rep, err := l.LoadForDevices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio", "virtio_pci", "net_failover", "virtio_net", "virtio_rng"}
	if !reflect.DeepEqual(sys.loaded, want) {
		t.Errorf("inserted %v, want %v", sys.loaded, want)
	}
	if !reflect.DeepEqual(rep.Loaded, want) {
		t.Errorf("report loaded %v, want %v", rep.Loaded, want)
	}
	wantUnclaimed := []Unclaimed{{Address: "0000:00:05.0", ID: "15b3:1017", Class: "0200"}}
	if !reflect.DeepEqual(rep.Unclaimed, wantUnclaimed) {
		t.Errorf("unclaimed %+v, want %+v", rep.Unclaimed, wantUnclaimed)
	}
	if len(rep.Failed) != 0 {
		t.Errorf("failed: %v", rep.Failed)
	}
	if sys.params["virtio_net"] != "napi_tx=1" || sys.params["virtio"] != "" {
		t.Errorf("params passed: %v", sys.params)
	}

	// A second explicit load of something already done is a no-op.
	if err := l.Load("virtio-rng"); err != nil || len(sys.loaded) != len(want) {
		t.Errorf("reload: err %v, inserted %v", err, sys.loaded)
	}
}

func TestLoadFailureIsReported(t *testing.T) {
	ix, err := Open(fakeModules(t))
	if err != nil {
		t.Fatal(err)
	}
	sys := &fakeSys{t: t, root: t.TempDir()}
	sys.device("pci", "0000:00:02.0", "pci:v00008086d0000100Esv00008086sd00001000bc02sc00i00")
	l := NewLoader(ix, slog.New(slog.NewTextHandler(io.Discard, nil)))
	l.SysRoot = sys.root
	l.Insert = func(string, string) error { return os.ErrPermission }
	rep, err := l.LoadForDevices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rep.Failed["e1000"]; !ok || len(rep.Loaded) != 0 {
		t.Errorf("report = %+v, want e1000 failed", rep)
	}
	if len(rep.Unclaimed) != 1 || rep.Unclaimed[0].ID != "8086:100e" {
		t.Errorf("unclaimed = %+v", rep.Unclaimed)
	}
}
