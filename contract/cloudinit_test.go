package contract

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

// MakePlan with a seed: the disk must hold the image and the seed (and a GPT's
// backup header), the placement is PlaceSeed's, and an image that cannot take a seed
// refuses the plan with the reason.
func TestMakePlanSeed(t *testing.T) {
	gpt := &ImageLayout{Table: "gpt", SectorSize: 512, Used: 2, Slots: 128, FreeSlot: 3, EndBytes: 100<<20 + 512}
	img := ImageRef{OSRef: OSRef{OSType: "debian", OSVersion: "12"}, SHA256: "ab", Size: 120 << 20, Layout: gpt}
	hw := func(sizes ...int64) []byte {
		var b strings.Builder
		b.WriteString(`{"disks":[`)
		for i, s := range sizes {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(`{"name":"d` + string(rune('a'+i)) + `","path":"/dev/d` + string(rune('a'+i)) + `","serial":"S` + string(rune('a'+i)) + `","size_bytes":` + strconv.FormatInt(s, 10) + `}`)
		}
		b.WriteString("]}")
		return []byte(b.String())
	}
	// seed at 101 MiB (aligned up), 40 MiB, + 33 sectors: 141 MiB + 16896 bytes.
	need := int64(141<<20 + 33*512)
	p := MakePlan("t", hw(need-1, need), nil, img.OSRef, true, []ImageRef{img})
	if !p.Approvable() || p.Disk.Serial != "Sb" || p.Seed == nil || p.Seed.StartBytes != 101<<20 || p.Seed.Partition != 3 || p.NeedBytes() != need {
		t.Fatalf("plan %+v seed %+v need %d", p, p.Seed, p.NeedBytes())
	}
	// without a seed the smaller disk is taken: the seed is what made it too small
	if p := MakePlan("t", hw(need-1, need), nil, img.OSRef, false, []ImageRef{img}); p.Seed != nil || p.Disk.Serial != "Sa" {
		t.Fatalf("plan without seed: %+v", p)
	}
	if p := MakePlan("t", hw(need-1), nil, img.OSRef, true, []ImageRef{img}); p.Approvable() || !strings.Contains(p.Refused, "cloud-init seed need") {
		t.Fatalf("no room: %+v", p)
	}
	full := *img.Layout
	full.Used, full.FreeSlot = 128, 0
	img.Layout = &full
	if p := MakePlan("t", hw(10<<30), nil, img.OSRef, true, []ImageRef{img}); p.Approvable() || !strings.Contains(p.Refused, "partition table is full") {
		t.Fatalf("full table: %+v", p)
	}
	img.Layout = nil
	if p := MakePlan("t", hw(10<<30), nil, img.OSRef, true, []ImageRef{img}); p.Approvable() || !strings.Contains(p.Refused, "unknown") {
		t.Fatalf("unknown layout: %+v", p)
	}
	if _, err := PlaceSeed(&ImageLayout{Table: "mbr", Used: 1, Slots: 4, FreeSlot: 2, EndBytes: 1 << 20, Seed: "partition 1"}); !errors.Is(err, ErrNoSeed) {
		t.Fatalf("existing seed: %v", err)
	}
}

// SeedFiles quotes what it puts into YAML: a hostname or key cannot add keys.
func TestSeedFilesQuote(t *testing.T) {
	f := SeedFiles("id-1", "52:54:00:AA:BB:CC", CloudInit{Hostname: "h\"1", SSHAuthorizedKeys: []string{"ssh-ed25519 AAAA x\ny: z"}})
	md := string(f[SeedMetaData])
	if !strings.Contains(md, `local-hostname: "h\"1"`) || !strings.Contains(md, `"ssh-ed25519 AAAA x\x0ay: z"`) {
		t.Fatalf("meta-data:\n%s", md)
	}
	if nc := string(f[SeedNetworkConfig]); !strings.Contains(nc, `macaddress: "52:54:00:aa:bb:cc"`) || !strings.Contains(nc, "dhcp4: true") {
		t.Fatalf("network-config:\n%s", nc)
	}
}
