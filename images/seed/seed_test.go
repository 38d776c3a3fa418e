package seed_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images/seed"
)

// The seed writer against real tools: images partitioned by sfdisk, the result
// checked by sfdisk --verify and sfdisk --json, the partitions' bytes hashed before
// and after, the CIDATA files read back by mtools.

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install fdisk mtools)", tool)
		}
	}
}

func run(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out) + stderr.String()
}

// makeImage writes an image of size bytes partitioned by the sfdisk script, each
// partition filled with random bytes (so a stray write shows in its hash).
func makeImage(t *testing.T, size int64, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.raw")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	run(t, script, "sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path)
	for _, p := range partitions(t, path) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		// the first and last MiB of each partition: enough to catch an overlap
		for _, off := range []int64{p.start, max(p.start, p.start+p.size-1<<20)} {
			buf := make([]byte, min(1<<20, p.size))
			rand.Read(buf)
			if _, err := f.WriteAt(buf, off); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
	}
	return path
}

type part struct {
	node        string
	start, size int64
	typ, name   string
}

func partitions(t *testing.T, path string) []part {
	t.Helper()
	var dump struct {
		PartitionTable struct {
			Label      string `json:"label"`
			LastLBA    int64  `json:"lastlba"`
			Partitions []struct {
				Node  string `json:"node"`
				Start int64  `json:"start"`
				Size  int64  `json:"size"`
				Type  string `json:"type"`
				Name  string `json:"name"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	out, err := exec.Command("sfdisk", "--json", path).Output() // stdout only: stderr warns of a moved backup header
	if err != nil {
		t.Fatalf("sfdisk --json %s: %v", path, err)
	}
	if err := json.Unmarshal(out, &dump); err != nil {
		t.Fatal(err)
	}
	var ps []part
	for _, p := range dump.PartitionTable.Partitions {
		ps = append(ps, part{node: p.Node, start: p.Start * 512, size: p.Size * 512, typ: p.Type, name: p.Name})
	}
	return ps
}

func hashRange(t *testing.T, path string, off, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// install copies the image onto a fresh "disk" file of diskSize bytes, as the
// agent's image writer does.
func install(t *testing.T, image string, diskSize int64) string {
	t.Helper()
	disk := filepath.Join(t.TempDir(), "disk.raw")
	src, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, src, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, diskSize); err != nil {
		t.Fatal(err)
	}
	return disk
}

// layoutOf reads path's layout, and checks that the catalog's streaming read of it
// (streamed: an image, not a big disk file) gives the same.
func layoutOf(t *testing.T, path string, streamed bool) contract.ImageLayout {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	l, err := seed.ReadLayout(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	if !streamed {
		return l
	}
	var s seed.Scanner
	if _, err := io.CopyBuffer(&s, io.NewSectionReader(f, 0, st.Size()), make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	fromStream, err := s.Layout()
	if err != nil {
		t.Fatal(err)
	}
	if fromStream != l {
		t.Fatalf("layout from the stream %+v, from the file %+v", fromStream, l)
	}
	return l
}

const MiB = 1 << 20

func TestWriteSeed(t *testing.T) {
	need(t, "sfdisk", "mdir", "mtype")
	gptScript := "label: gpt\nsize=8MiB, type=21686148-6F69-6E64-6F6F-6B6A6F6E6F69\nsize=16MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nsize=20MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
	cases := []struct {
		name      string
		imageSize int64
		script    string
		diskSizes []int64
		table     string
		partition int
	}{
		{"gpt smaller than the disk", 64 * MiB, gptScript, []int64{128 * MiB, 1 << 30, 20 << 30}, "gpt", 4},
		// the last partition runs to the GPT's last usable sector: the seed starts
		// where the image's backup header was
		{"gpt over the whole image", 48 * MiB, "label: gpt\nsize=8MiB\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n", []int64{89 * MiB, 3 << 30}, "gpt", 3},
		{"mbr", 40 * MiB, "label: dos\nsize=16MiB, type=ef, bootable\ntype=83\n", []int64{81 * MiB, 2 << 30}, "mbr", 3},
		// a gap in the GPT's entries: the seed takes the first free one
		{"gpt with a gap", 64 * MiB, "label: gpt\n1 : start=2048, size=16MiB\n3 : size=16MiB\n", []int64{128 * MiB}, "gpt", 2},
	}
	files := contract.SeedFiles("task-1", "52:54:00:12:34:56", contract.CloudInit{
		Hostname: "web-1", SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test"},
		UserData: "#cloud-config\npackages: [htop]\n",
	})
	for _, tc := range cases {
		image := makeImage(t, tc.imageSize, tc.script)
		l := layoutOf(t, image, true)
		p, err := contract.PlaceSeed(&l)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if p.Table != tc.table || p.Partition != tc.partition || p.StartBytes%MiB != 0 || p.StartBytes < l.EndBytes {
			t.Fatalf("%s: placed %+v on layout %+v", tc.name, p, l)
		}
		for _, size := range tc.diskSizes {
			t.Run(fmt.Sprintf("%s/%dMiB", tc.name, size/MiB), func(t *testing.T) {
				disk := install(t, image, size)
				before := partitions(t, disk)
				hashes := map[string]string{}
				for _, bp := range before {
					hashes[bp.node] = hashRange(t, disk, bp.start, bp.size)
				}
				if err := seed.Write(disk, p, files); err != nil {
					t.Fatal(err)
				}
				out := run(t, "", "sfdisk", "--verify", disk)
				if !strings.Contains(out, "No errors detected") || strings.Contains(out, "arning") || strings.Contains(out, "mismatch") {
					t.Fatalf("sfdisk --verify: %s", out)
				}
				after := partitions(t, disk)
				if len(after) != len(before)+1 {
					t.Fatalf("partitions before %v, after %v", before, after)
				}
				byNode := map[string]part{}
				for _, ap := range after {
					byNode[ap.node] = ap
				}
				for _, bp := range before {
					if ap := byNode[bp.node]; ap != bp {
						t.Fatalf("partition %s changed: %+v -> %+v", bp.node, bp, ap)
					}
					if h := hashRange(t, disk, bp.start, bp.size); h != hashes[bp.node] {
						t.Fatalf("partition %s's bytes changed", bp.node)
					}
				}
				sp := byNode[fmt.Sprintf("%s%d", disk, p.Partition)]
				if sp.start != p.StartBytes || sp.size != p.SizeBytes {
					t.Fatalf("seed partition %+v, planned %+v", sp, p)
				}
				if tc.table == "gpt" {
					if sp.name != "CIDATA" {
						t.Fatalf("seed partition name %q", sp.name)
					}
					// the backup header is at the disk's last sector
					f, _ := os.Open(disk)
					hdr := make([]byte, 8)
					f.ReadAt(hdr, size-512)
					f.Close()
					if string(hdr) != "EFI PART" {
						t.Fatalf("no GPT backup header in the disk's last sector: %q", hdr)
					}
				}
				img := fmt.Sprintf("%s@@%d", disk, p.StartBytes)
				dir := run(t, "", "mdir", "-i", img, "::")
				if !strings.Contains(dir, "Volume in drive : is CIDATA") {
					t.Fatalf("mdir: %s", dir)
				}
				// what cloud-init's NoCloud looks for: blkid's LABEL=CIDATA on vfat
				if _, err := exec.LookPath("blkid"); err == nil {
					got := run(t, "", "blkid", "-p", "-O", fmt.Sprint(p.StartBytes), "-s", "LABEL", "-s", "TYPE", "-o", "export", disk)
					if !strings.Contains(got, "LABEL=CIDATA") || !strings.Contains(got, "TYPE=vfat") {
						t.Fatalf("blkid: %s", got)
					}
				}
				for name, want := range files {
					got := run(t, "", "mtype", "-i", img, "::"+name)
					if got != string(want) {
						t.Fatalf("%s reads back %q, wrote %q", name, got, want)
					}
				}
				// a disk that now carries a seed refuses a second one
				if l := layoutOf(t, disk, false); l.Seed == "" {
					t.Fatalf("layout after the seed %+v: no seed found", l)
				}
			})
		}
	}
}

func TestPlaceSeedRefuses(t *testing.T) {
	need(t, "sfdisk")
	cases := map[string]string{
		"full": "label: dos\nsize=4MiB\nsize=4MiB\nsize=4MiB\nsize=4MiB\n",
		// an image that brings its own seed: refused, not replaced
		"has a seed": "label: gpt\nsize=8MiB, name=CIDATA\nsize=8MiB\n",
		"extended":   "label: dos\nsize=4MiB\nsize=8MiB, type=5\n",
	}
	for name, script := range cases {
		l := layoutOf(t, makeImage(t, 32*MiB, script), true)
		if _, err := contract.PlaceSeed(&l); !errors.Is(err, contract.ErrNoSeed) {
			t.Errorf("%s: layout %+v placed a seed (err %v)", name, l, err)
		}
	}
	// no table at all
	raw := filepath.Join(t.TempDir(), "raw")
	os.WriteFile(raw, bytes.Repeat([]byte{0xaa}, 4*MiB), 0o644)
	if l := layoutOf(t, raw, true); l.Table != "none" {
		t.Errorf("random bytes: layout %+v", l)
	}
}

// The seed writer refuses a disk whose image is not the one the plan placed the
// seed for, and writes nothing.
func TestWriteRefusesAnotherLayout(t *testing.T) {
	need(t, "sfdisk")
	image := makeImage(t, 32*MiB, "label: gpt\nsize=8MiB\n")
	l := layoutOf(t, image, true)
	p, err := contract.PlaceSeed(&l)
	if err != nil {
		t.Fatal(err)
	}
	other := install(t, makeImage(t, 32*MiB, "label: gpt\nsize=20MiB\n"), 128*MiB)
	before := hashRange(t, other, 0, 128*MiB)
	if err := seed.Write(other, p, map[string][]byte{"meta-data": nil}); !errors.Is(err, contract.ErrNoSeed) {
		t.Fatalf("write onto another layout: %v", err)
	}
	small := install(t, image, 32*MiB)
	if err := seed.Write(small, p, map[string][]byte{"meta-data": nil}); !errors.Is(err, contract.ErrNoSeed) {
		t.Fatalf("write onto a disk without room: %v", err)
	}
	if hashRange(t, other, 0, 128*MiB) != before {
		t.Fatal("a refused seed wrote to the disk")
	}
}
