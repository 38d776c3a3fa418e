package seed

import (
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"lpmos.dev/lpmos/contract"
)

// Write adds the seed the plan placed onto the disk (or file) at path, which already
// holds the verified image: it re-reads the image's table, checks that the
// placement rule still gives the plan's answer (the bytes on the disk are the bytes
// the plan was made for), adds the partition (a GPT's backup header and array move
// to the disk's end), formats it FAT32 labelled CIDATA and writes files into it.
// Nothing outside the new partition and the table's own sectors is written.
func Write(path string, want contract.PlanSeed, files map[string][]byte) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd) // a block device's size too
	if err != nil {
		return fmt.Errorf("size of %s: %w", path, err)
	}
	l, err := ReadLayout(f, size)
	if err != nil {
		return fmt.Errorf("read the written image's partition table: %w", err)
	}
	got, err := contract.PlaceSeed(&l)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%w: the written image's table places it at partition %d, %d bytes in, not where the plan says (partition %d, %d bytes in)",
			contract.ErrNoSeed, got.Partition, got.StartBytes, want.Partition, want.StartBytes)
	}
	need := (&contract.Plan{Image: &contract.ImageRef{}, Seed: &want}).NeedBytes()
	if size < need {
		return fmt.Errorf("%w: %s has %d bytes, the image and the seed need %d", contract.ErrNoSeed, path, size, need)
	}
	store := file.New(f, false)
	w, err := store.Writable()
	if err != nil {
		return err
	}
	startLBA, sectors := uint64(want.StartBytes/sectorSize), uint64(want.SizeBytes/sectorSize)
	switch want.Table {
	case "gpt":
		t, err := gpt.Read(store, sectorSize, sectorSize)
		if err != nil {
			return fmt.Errorf("read GPT: %w", err)
		}
		if err := t.Repair(uint64(size)); err != nil { // the backup header to the disk's end
			return fmt.Errorf("move the GPT backup header: %w", err)
		}
		t.Partitions = append(t.Partitions, &gpt.Partition{
			Index: want.Partition, Start: startLBA, End: startLBA + sectors - 1,
			Type: gpt.MicrosoftBasicData, Name: want.Label,
		})
		if err := t.Write(w, size); err != nil {
			return fmt.Errorf("write GPT: %w", err)
		}
	case "mbr":
		t, err := mbr.Read(store, sectorSize, sectorSize)
		if err != nil {
			return fmt.Errorf("read MBR: %w", err)
		}
		// CHS 1023/254/63 everywhere: "use the LBA fields", what every tool writes
		// for a partition past 8 GiB.
		t.Partitions[want.Partition-1] = &mbr.Partition{
			Index: want.Partition, Type: mbr.Fat32LBA, Start: uint32(startLBA), Size: uint32(sectors),
			StartHead: 0xfe, StartSector: 0xff, StartCylinder: 0xff, EndHead: 0xfe, EndSector: 0xff, EndCylinder: 0xff,
		}
		if err := t.Write(w, size); err != nil {
			return fmt.Errorf("write MBR: %w", err)
		}
	default:
		return fmt.Errorf("%w: unknown table %q", contract.ErrNoSeed, want.Table)
	}
	fsys, err := fat32.Create(store, want.SizeBytes, want.StartBytes, sectorSize, want.Label, false)
	if err != nil {
		return fmt.Errorf("format the seed partition: %w", err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		out, err := fsys.OpenFile("/"+name, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
		if err != nil {
			return fmt.Errorf("create %s on the seed: %w", name, err)
		}
		if _, err := out.Write(files[name]); err != nil {
			return fmt.Errorf("write %s on the seed: %w", name, err)
		}
		if err := out.Close(); err != nil {
			return fmt.Errorf("close %s on the seed: %w", name, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}
