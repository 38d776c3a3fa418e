package contract

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// CloudInit is a task's first-boot configuration, handed to the installed OS through
// cloud-init's NoCloud datasource: on a small FAT partition labelled CIDATA that the
// agent adds after the image (the plan's Seed), and over HTTP from the appliance
// (NoCloud-net, /nocloud/{task}/). Empty fields are left out of the seed.
type CloudInit struct {
	Hostname          string   `json:"hostname,omitempty"`
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys,omitempty"`
	// UserData is a "#cloud-config" document or a script; it may hold secrets, so it
	// is masked wherever a person sees a task and never logged.
	UserData string `json:"user_data,omitempty"`
	// NetworkConfig is cloud-init network config version 2; empty: DHCP on the NIC
	// with the task's MAC.
	NetworkConfig string `json:"network_config,omitempty"`
}

// Empty reports whether c configures nothing: such a task gets no seed.
func (c *CloudInit) Empty() bool {
	return c == nil || (c.Hostname == "" && len(c.SSHAuthorizedKeys) == 0 && c.UserData == "" && c.NetworkConfig == "")
}

// The NoCloud seed's files (cloud-init's names) and the volume label it looks for.
const (
	SeedMetaData      = "meta-data"
	SeedUserData      = "user-data"
	SeedNetworkConfig = "network-config"
	SeedVendorData    = "vendor-data"
	SeedLabel         = "CIDATA"
)

// SeedFiles renders the NoCloud files of task id for the machine with MAC mac. The
// instance-id is the task id, so a reinstall (a new task) runs cloud-init's
// first-boot modules again. user-data is always present (NoCloud requires the
// file); an empty one configures nothing.
func SeedFiles(taskID, mac string, c CloudInit) map[string][]byte {
	var md strings.Builder
	fmt.Fprintf(&md, "instance-id: %s\n", yamlQuote(taskID))
	if c.Hostname != "" {
		fmt.Fprintf(&md, "local-hostname: %s\n", yamlQuote(c.Hostname))
	}
	if len(c.SSHAuthorizedKeys) > 0 {
		md.WriteString("public-keys:\n")
		for _, k := range c.SSHAuthorizedKeys {
			fmt.Fprintf(&md, "  - %s\n", yamlQuote(k))
		}
	}
	nc := c.NetworkConfig
	if nc == "" {
		nc = fmt.Sprintf("version: 2\nethernets:\n  lpmos0:\n    match:\n      macaddress: %s\n    dhcp4: true\n", yamlQuote(strings.ToLower(mac)))
	}
	ud := c.UserData
	if ud == "" {
		ud = "#cloud-config\n{}\n"
	}
	return map[string][]byte{
		SeedMetaData:      []byte(md.String()),
		SeedUserData:      []byte(ud),
		SeedNetworkConfig: []byte(nc),
		SeedVendorData:    {},
	}
}

// yamlQuote quotes s as a YAML double-quoted scalar (JSON's escapes are YAML's).
func yamlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// ImageLayout is the partition table of an image, read once when the image enters
// the catalog (`lpmos-image add`), so a plan can place the seed before a byte is
// written.
type ImageLayout struct {
	Table      string `json:"table"` // "gpt", "mbr", or "none" (no partition table)
	SectorSize int    `json:"sector_size,omitempty"`
	// Used and Slots: entries in use and entries the table holds (GPT: usually 128;
	// MBR: 4 primary).
	Used  int `json:"used"`
	Slots int `json:"slots"`
	// FreeSlot is the number (1-based) of the first unused entry, 0 if none.
	FreeSlot int `json:"free_slot,omitempty"`
	// EndBytes is where the last partition ends.
	EndBytes int64 `json:"end_bytes"`
	// Extended: the MBR has an extended partition (logical partitions are not
	// handled: the plan refuses a seed rather than guess).
	Extended bool `json:"extended,omitempty"`
	// Seed names the partition that already carries a CIDATA volume, "" if none.
	Seed string `json:"seed,omitempty"`
}

// PlanSeed is where the plan puts the NoCloud seed: a new partition, number
// Partition of the image's table, StartBytes..StartBytes+SizeBytes on the disk,
// formatted FAT with the label CIDATA. A GPT's backup header moves to the disk's
// end.
type PlanSeed struct {
	Table      string `json:"table"`
	Partition  int    `json:"partition"`
	StartBytes int64  `json:"start_bytes"`
	SizeBytes  int64  `json:"size_bytes"`
	Label      string `json:"label"`
}

// SeedSize is the seed partition's size: enough clusters for a FAT32 that every
// tool (blkid, mtools, the kernel) takes as FAT32, which needs >= 65525 clusters.
const SeedSize = 40 << 20

// seedAlign aligns the seed's start like every partitioning tool does.
const seedAlign = 1 << 20

// gptBackupBytes is what a GPT keeps at the disk's end: the 128-entry array and the
// backup header.
const gptBackupBytes = 33 * 512

// ErrNoSeed is a seed that cannot be placed on an image; the plan refuses with it.
var ErrNoSeed = errors.New("cannot add the cloud-init seed")

// PlaceSeed decides where the seed goes on an image of this layout (the disk it
// needs is Plan.NeedBytes). It is the one placement rule: MakePlan uses it, and the
// agent checks the written image against its answer before it touches the table.
func PlaceSeed(l *ImageLayout) (PlanSeed, error) {
	switch {
	case l == nil:
		return PlanSeed{}, fmt.Errorf("%w: the image's partition table is unknown (add the image again with a current lpmos-image)", ErrNoSeed)
	case l.Table != "gpt" && l.Table != "mbr":
		return PlanSeed{}, fmt.Errorf("%w: the image has no partition table", ErrNoSeed)
	case l.Seed != "":
		// Refused, not replaced: a seed baked into an image is the image author's
		// decision, and two CIDATA volumes make cloud-init's choice arbitrary.
		return PlanSeed{}, fmt.Errorf("%w: the image already carries a CIDATA partition (%s)", ErrNoSeed, l.Seed)
	case l.Extended:
		return PlanSeed{}, fmt.Errorf("%w: the image's MBR has an extended partition", ErrNoSeed)
	case l.FreeSlot == 0:
		return PlanSeed{}, fmt.Errorf("%w: the image's %s partition table is full (%d of %d entries used)", ErrNoSeed, strings.ToUpper(l.Table), l.Used, l.Slots)
	}
	start := (l.EndBytes + seedAlign - 1) / seedAlign * seedAlign
	s := PlanSeed{Table: l.Table, Partition: l.FreeSlot, StartBytes: start, SizeBytes: SeedSize, Label: SeedLabel}
	if l.Table == "mbr" && (start+SeedSize)/512 > 1<<32-1 {
		return PlanSeed{}, fmt.Errorf("%w: the seed would end past an MBR's 2 TiB limit", ErrNoSeed)
	}
	return s, nil
}

// NeedBytes is the smallest disk p can be carried out on: the image, and the seed
// with a GPT's backup header when p adds one.
func (p *Plan) NeedBytes() int64 {
	if p == nil || p.Image == nil {
		return 0
	}
	need := p.Image.Size
	if p.Seed != nil {
		end := p.Seed.StartBytes + p.Seed.SizeBytes
		if p.Seed.Table == "gpt" {
			end += gptBackupBytes
		}
		need = max(need, end)
	}
	return need
}

// SeedFilesFrom fetches a task's NoCloud files from the appliance
// (GET /nocloud/{task}/{file}, with the agent token), the files the agent writes
// into the seed partition.
func (c *Client) SeedFilesFrom(ctx context.Context, taskID string) (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, name := range []string{SeedMetaData, SeedUserData, SeedNetworkConfig, SeedVendorData} {
		path := "/nocloud/" + url.PathEscape(taskID) + "/" + name
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.BaseURL, "/")+path, nil)
		if err != nil {
			return nil, err
		}
		if c.Token != "" {
			req.Header.Set("Authorization", "Bearer "+c.Token)
		}
		resp, err := c.httpClient().Do(req)
		if err != nil {
			return nil, fmt.Errorf("GET %s: %w", path, err)
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("GET %s: read: %w", path, err)
		}
		if resp.StatusCode != http.StatusOK {
			se := &StatusError{Code: resp.StatusCode}
			_ = json.Unmarshal(data, &se.Body)
			return nil, fmt.Errorf("GET %s: %w", path, se)
		}
		files[name] = data
	}
	return files, nil
}
