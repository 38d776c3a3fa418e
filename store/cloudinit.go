package store

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"

	"lpmos.dev/lpmos/contract"
)

// The task's cloud-init fields are checked here, once, before anything is stored: a
// seed cloud-init would choke on is found at creation, not on the machine's first
// boot.

// Caps on the cloud-init fields. cloud-init itself has no small limit; these keep a
// task's metadata key (etcd value) small, and the seed partition holds far more.
const (
	MaxUserData      = 32 << 10
	MaxNetworkConfig = 16 << 10
	MaxSSHKeys       = 32
)

// hostnameRE is an RFC 1123 host name: dot-separated labels of letters, digits and
// inner hyphens, each at most 63 characters.
var hostnameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$`)

// validateCloudInit checks *cp in place (keys trimmed; an all-empty one dropped, so
// such a task plans no seed). Errors name the field.
func validateCloudInit(cp **contract.CloudInit) error {
	c := *cp
	if c.Empty() {
		*cp = nil
		return nil
	}
	if c.Hostname != "" && (len(c.Hostname) > 253 || !hostnameRE.MatchString(c.Hostname)) {
		return invalid("hostname", "%q is not a host name (letters, digits, inner '-', dot-separated labels of at most 63 characters)", truncate(c.Hostname, 64))
	}
	if len(c.SSHAuthorizedKeys) > MaxSSHKeys {
		return invalid("ssh_authorized_keys", "at most %d keys, not %d", MaxSSHKeys, len(c.SSHAuthorizedKeys))
	}
	for i, k := range c.SSHAuthorizedKeys {
		k = strings.TrimSpace(k)
		if strings.ContainsAny(k, "\r\n") {
			return invalid("ssh_authorized_keys", "key %d spans several lines: give one key per entry", i+1)
		}
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return invalid("ssh_authorized_keys", "key %d is not an authorized_keys line like \"ssh-ed25519 AAAA... comment\": %v", i+1, err)
		}
		c.SSHAuthorizedKeys[i] = k
	}
	if err := validateUserData(c.UserData); err != nil {
		return err
	}
	if c.NetworkConfig != "" {
		if len(c.NetworkConfig) > MaxNetworkConfig {
			return invalid("network_config", "is %d bytes, at most %d", len(c.NetworkConfig), MaxNetworkConfig)
		}
		var nc struct {
			Version *int `yaml:"version"`
		}
		if err := yaml.Unmarshal([]byte(c.NetworkConfig), &nc); err != nil {
			return invalid("network_config", "is not YAML: %v", err)
		}
		if nc.Version == nil || *nc.Version != 2 {
			return invalid("network_config", "must be cloud-init network config version 2 (\"version: 2\")")
		}
	}
	return nil
}

// validateUserData accepts a #cloud-config document that parses as a YAML mapping,
// a script (#!), an #include list or a MIME multi-part archive: what cloud-init
// acts on. Anything else cloud-init would silently ignore, so it is refused here.
// The error never quotes the content: user-data may hold secrets.
func validateUserData(ud string) error {
	if ud == "" {
		return nil
	}
	if len(ud) > MaxUserData {
		return invalid("user_data", "is %d bytes, at most %d", len(ud), MaxUserData)
	}
	switch {
	case strings.HasPrefix(ud, "#cloud-config"):
		var doc any
		if err := yaml.Unmarshal([]byte(ud), &doc); err != nil {
			return invalid("user_data", "claims #cloud-config but is not valid YAML: %s", yamlErrorLine(err))
		}
		if _, ok := doc.(map[string]any); !ok && doc != nil {
			return invalid("user_data", "claims #cloud-config but is not a YAML mapping")
		}
	case strings.HasPrefix(ud, "#!"), strings.HasPrefix(ud, "#include"), strings.HasPrefix(ud, "#cloud-boothook"),
		strings.HasPrefix(strings.ToLower(ud), "content-type: multipart/"):
	default:
		return invalid("user_data", "must start with #cloud-config, #! (a script), #include, #cloud-boothook or a MIME multipart header")
	}
	return nil
}

// yamlErrorLine keeps only the parser's position ("yaml: line 3"), which says where
// without quoting the document.
func yamlErrorLine(err error) string {
	if m := yamlLineRE.FindString(err.Error()); m != "" {
		return m
	}
	return "yaml: syntax error"
}

var yamlLineRE = regexp.MustCompile(`^yaml: line \d+`)

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// Region defaults: a region may carry cloud-init fields every new task of the region
// starts from (/os/region/{region}/cloud_init), e.g. the organisation's SSH keys. They
// are merged into the task when it is created (mergeCloudInit), so the task, its plan
// and its seed say exactly what the machine gets, and a later change of the defaults
// never changes an approved install.

// AuditRegionCloudInit records a change of a region's cloud-init defaults.
const AuditRegionCloudInit = "region.cloud_init"

// RegionCloudInit returns the region's cloud-init defaults, nil when it has none.
func (s *Store) RegionCloudInit(ctx context.Context, region string) (*contract.CloudInit, error) {
	if err := ValidateRegion(region); err != nil {
		return nil, err
	}
	resp, err := s.c.Get(ctx, regionCloudInitKey(region))
	if err != nil {
		return nil, fmt.Errorf("read region %s cloud-init defaults: %w", region, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var c contract.CloudInit
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return nil, fmt.Errorf("region %s cloud-init defaults unreadable: %w", region, err)
	}
	return &c, nil
}

// SetRegionCloudInit validates and stores the region's defaults (an empty c removes
// them), audited. A hostname is per machine: it is refused here.
func (s *Store) SetRegionCloudInit(ctx context.Context, region string, c *contract.CloudInit) error {
	if err := ValidateRegion(region); err != nil {
		return err
	}
	if c != nil && c.Hostname != "" {
		return invalid("hostname", "is per machine: set it on the task, not on the region")
	}
	if err := validateCloudInit(&c); err != nil {
		return err
	}
	e := newAudit(ctx, s.now(), AuditRegionCloudInit, region, "")
	e.Target = region
	op := clientv3.OpDelete(regionCloudInitKey(region))
	if c != nil {
		b, _ := json.Marshal(c)
		op = clientv3.OpPut(regionCloudInitKey(region), string(b))
		e.with("ssh_keys", fmt.Sprint(len(c.SSHAuthorizedKeys))).with("user_data_bytes", fmt.Sprint(len(c.UserData)))
	} else {
		e.with("removed", "true")
	}
	if _, err := s.c.Txn(ctx).Then(op, e.op()).Commit(); err != nil {
		return fmt.Errorf("store region %s cloud-init defaults: %w", region, err)
	}
	return nil
}

// mergeCloudInit is a task's cloud-init on top of its region's defaults: the keys of
// both (the region's first, no duplicates), the task's user-data and network config
// where it has them, else the region's.
func mergeCloudInit(region, task *contract.CloudInit) *contract.CloudInit {
	if region.Empty() {
		return task
	}
	m := *region
	m.SSHAuthorizedKeys = slices.Clone(region.SSHAuthorizedKeys)
	if task != nil {
		m.Hostname = task.Hostname
		for _, k := range task.SSHAuthorizedKeys {
			if !slices.Contains(m.SSHAuthorizedKeys, k) {
				m.SSHAuthorizedKeys = append(m.SSHAuthorizedKeys, k)
			}
		}
		if task.UserData != "" {
			m.UserData = task.UserData
		}
		if task.NetworkConfig != "" {
			m.NetworkConfig = task.NetworkConfig
		}
	}
	return &m
}
