package control

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// A task's cloud-init fields (store/cloudinit.go validates them): the add-task form
// reads them, and every answer that shows a task masks its user-data, which may hold
// passwords or tokens. The appliance hands the real bytes only to the task's agent
// token (NoCloud-net); nothing here logs them.

// cloudInitForm is the add-task form's cloud-init block, as typed.
type cloudInitForm struct {
	Hostname, SSHKeys, UserData, NetworkConfig string
}

func readCloudInitForm(v url.Values) cloudInitForm {
	return cloudInitForm{
		Hostname: strings.TrimSpace(v.Get("hostname")), SSHKeys: v.Get("ssh_authorized_keys"),
		UserData: strings.ReplaceAll(v.Get("user_data"), "\r\n", "\n"), NetworkConfig: strings.ReplaceAll(v.Get("network_config"), "\r\n", "\n"),
	}
}

// cloudInit is the form's block as the task's fields: one SSH key a line, blank
// lines skipped; nil when nothing was typed.
func (f cloudInitForm) cloudInit() *contract.CloudInit {
	c := &contract.CloudInit{Hostname: f.Hostname, UserData: f.UserData, NetworkConfig: f.NetworkConfig}
	for _, line := range strings.Split(f.SSHKeys, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			c.SSHAuthorizedKeys = append(c.SSHAuthorizedKeys, line)
		}
	}
	if c.Empty() {
		return nil
	}
	return c
}

// maskUserData is what a person or a script reading a task sees of its user-data:
// its size and a digest (to tell two apart), never the bytes.
func maskUserData(ud string) string {
	if ud == "" {
		return ""
	}
	return fmt.Sprintf("(masked: %d bytes, sha256 %x)", len(ud), sha256.Sum256([]byte(ud)))
}

// masked is t as shown: its user-data masked (on a copy: t's CloudInit is shared).
func masked(t store.Task) store.Task {
	if t.CloudInit != nil && t.CloudInit.UserData != "" {
		c := *t.CloudInit
		c.UserData = maskUserData(c.UserData)
		t.CloudInit = &c
	}
	return t
}

// maskedAll masks every task of a list in place.
func maskedAll(ts []store.Task) []store.Task {
	for i := range ts {
		ts[i] = masked(ts[i])
	}
	return ts
}

// getRegionCloudInit is GET /api/v1/regions/{region}/cloud-init: the region's
// defaults, user-data masked ({} when it has none).
func (s *Server) getRegionCloudInit(w http.ResponseWriter, r *http.Request) error {
	c, err := s.fleet.RegionCloudInit(r.Context(), r.PathValue("region"))
	if err != nil {
		return err
	}
	if c == nil {
		c = &contract.CloudInit{}
	}
	c.UserData = maskUserData(c.UserData)
	httpjson.Write(w, http.StatusOK, c)
	return nil
}

// putRegionCloudInit is PUT /api/v1/regions/{region}/cloud-init (admin): the
// defaults every task created in the region from now on starts from
// (ssh_authorized_keys, user_data, network_config); {} removes them.
func (s *Server) putRegionCloudInit(w http.ResponseWriter, r *http.Request) error {
	var c contract.CloudInit
	if err := httpjson.Decode(w, r, &c); err != nil {
		return err
	}
	region := r.PathValue("region")
	if err := s.fleet.SetRegionCloudInit(r.Context(), region, &c); err != nil {
		return err
	}
	s.log.Info("region cloud-init defaults set", "region", region, "ssh_keys", len(c.SSHAuthorizedKeys), "user_data_bytes", len(c.UserData))
	c.UserData = maskUserData(c.UserData)
	httpjson.Write(w, http.StatusOK, c)
	return nil
}
