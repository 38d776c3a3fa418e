package appliance

import (
	"net/http"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store/httpjson"
)

// NoCloud-net: GET /nocloud/{task}/{meta-data,user-data,network-config,vendor-data}
// serves a task's cloud-init seed, the same files the agent writes onto the disk
// (contract.SeedFiles). The agent fetches them here to write the seed; an image
// booted with "ds=nocloud;s=http://lpmos:<token>@<appliance>:8081/nocloud/<task>/"
// reads them at first boot (cloud-init sends the URL's user:password as Basic auth).
// Both carry the task's agent token: user-data may hold secrets, so a task's files
// go only to the holder of its token, and never into a log.

// handleNoCloud serves one seed file of a task of this region to its token's holder.
func (a *Appliance) handleNoCloud(w http.ResponseWriter, r *http.Request) error {
	id, name := r.PathValue("task"), r.PathValue("file")
	switch name {
	case contract.SeedMetaData, contract.SeedUserData, contract.SeedNetworkConfig, contract.SeedVendorData:
	default:
		return httpjson.Errorf(http.StatusNotFound, "no such NoCloud file %q (meta-data, user-data, network-config, vendor-data)", name)
	}
	// Within this region only: a region's etcd role cannot read the control-only task
	// index, and another region's task is not ours to serve.
	t, err := a.store.GetTask(r.Context(), id) // the appliance's store is pinned to its region
	if err != nil {
		return err
	}
	tok := bearer(r)
	if _, pass, ok := r.BasicAuth(); tok == "" && ok {
		tok = pass
	}
	if err := authorize(&t, tok); err != nil {
		return a.reject(w, r, t.TaskID, t.TargetMAC, err.(*errBadToken).reason)
	}
	var ci contract.CloudInit
	if t.CloudInit != nil {
		ci = *t.CloudInit
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, err = w.Write(contract.SeedFiles(t.TaskID, t.TargetMAC, ci)[name])
	return err
}
