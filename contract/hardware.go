package contract

// MaxHardwareBytes caps a hardware report (the JSON of Hardware): the appliance answers
// 413 over it. Measured (appliance/reportsize_test.go): a large server (2 x 64 cores x 2
// threads, 12 NVMe + 12 SAS disks with partitions, 8 NICs, 12 driverless GPUs) is
// 21,012 bytes; each further JBOD disk with two partitions adds 585; ghw's real
// snapshots are at most 3,602. The cap is 16 large servers (336 KB) rounded up: a
// 424-disk storage node (255,651 bytes) fits with room, and it stays well below the
// 1 MiB request body limit and etcd's 1.5 MiB value limit.
const MaxHardwareBytes = 384 << 10

// Hardware is the agent's report: what an operator needs to approve a wipe. Fields are
// optional (a host-mode agent or an odd machine may not know some of them).
type Hardware struct {
	Hostname       string      `json:"hostname,omitempty"`
	Firmware       string      `json:"firmware,omitempty"` // "uefi" or "bios"
	CPU            CPU         `json:"cpu"`
	Memory         Memory      `json:"memory"`
	Disks          []Disk      `json:"disks"`
	NICs           []NIC       `json:"nics"`
	System         System      `json:"system"`
	MissingDrivers []PCIDevice `json:"missing_drivers,omitempty"`
	BootDisk       string      `json:"boot_disk,omitempty"` // the disk the agent itself runs from, never a target
	AgentVersion   string      `json:"agent_version,omitempty"`
}

type CPU struct {
	Model   string `json:"model,omitempty"`
	Sockets int    `json:"sockets,omitempty"`
	Cores   int    `json:"cores"`
	Threads int    `json:"threads"`
}

type Memory struct {
	TotalBytes  int64 `json:"total_bytes"`
	UsableBytes int64 `json:"usable_bytes,omitempty"`
}

type Disk struct {
	Name        string      `json:"name"` // sda, nvme0n1, vda
	Path        string      `json:"path"` // /dev/vda
	SizeBytes   int64       `json:"size_bytes"`
	Model       string      `json:"model,omitempty"`
	Vendor      string      `json:"vendor,omitempty"`
	Serial      string      `json:"serial,omitempty"`
	WWN         string      `json:"wwn,omitempty"`
	ByPath      string      `json:"by_path,omitempty"`
	Removable   bool        `json:"removable"`
	Rotational  bool        `json:"rotational"`
	Controller  string      `json:"controller,omitempty"` // scsi, nvme, virtio, ide, usb...
	PartTable   string      `json:"partition_table,omitempty"`
	Partitions  []Partition `json:"partitions,omitempty"`
	ReadOnly    bool        `json:"read_only,omitempty"`
	StorageType string      `json:"storage_type,omitempty"` // hdd, ssd, virtual...
}

type Partition struct {
	Name       string `json:"name"`
	SizeBytes  int64  `json:"size_bytes"`
	Type       string `json:"type,omitempty"`
	Filesystem string `json:"filesystem,omitempty"`
	Label      string `json:"label,omitempty"`
	MountPoint string `json:"mount_point,omitempty"`
}

type NIC struct {
	Name    string `json:"name"`
	MAC     string `json:"mac"`
	Driver  string `json:"driver,omitempty"`
	Link    bool   `json:"link"`
	SpeedMb int    `json:"speed_mbps,omitempty"`
	Virtual bool   `json:"virtual,omitempty"`
	PCI     string `json:"pci_address,omitempty"`
}

type System struct {
	Vendor  string `json:"vendor,omitempty"`
	Product string `json:"product,omitempty"`
	Serial  string `json:"serial,omitempty"`
	UUID    string `json:"uuid,omitempty"`
	BIOS    string `json:"bios_version,omitempty"`
}

type PCIDevice struct {
	Address string `json:"address"`
	Vendor  string `json:"vendor_id"`
	Device  string `json:"device_id"`
	Class   string `json:"class,omitempty"`
	Name    string `json:"name,omitempty"`
}
