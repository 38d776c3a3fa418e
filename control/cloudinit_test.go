package control_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
)

// The add-task page's cloud-init block: a bad key is shown next to its field with
// what was typed kept and nothing stored; a good submission stores the fields, and
// the task page shows the user-data masked, never its bytes.
func TestCreatePageCloudInit(t *testing.T) {
	img := ubuntuImage
	img.Layout = &contract.ImageLayout{Table: "gpt", SectorSize: 512, Used: 2, Slots: 128, FreeSlot: 3, EndBytes: 2<<30 - 1<<20}
	ctx, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1", APIURL: "http://dc1.example:8081", Images: []contract.ImageRef{img}})
	base := cp.URL()
	const secret = "hunter2-LPMOS-secret"
	v := url.Values{"region": {"dc1"}, "mac": {"52:54:00:00:00:21"}, "os_type": {"ubuntu"}, "os_version": {"22.04"},
		"hostname": {"web-21"}, "ssh_authorized_keys": {"ssh-rsa not-a-key"}, "user_data": {"#cloud-config\npassword: " + secret + "\n"}}
	code, body, _ := form(t, base+"/tasks/create", v, nil)
	if code != http.StatusBadRequest || !strings.Contains(body, `id="ssh_authorized_keys-error"`) || !strings.Contains(body, `value="web-21"`) {
		t.Fatalf("bad key: %d\n%s", code, body)
	}
	if tasks, err := etcd.Store.ListTasks(ctx, store.ListFilter{}); err != nil || len(tasks) != 0 {
		t.Fatalf("a refused form stored %d tasks (%v)", len(tasks), err)
	}
	v.Set("ssh_authorized_keys", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example\r\n\r\n")
	code, _, loc := form(t, base+"/tasks/create", v, nil)
	if code != http.StatusSeeOther {
		t.Fatalf("create: %d", code)
	}
	id := strings.TrimPrefix(strings.Split(loc, "?")[0], "/tasks/")
	task, err := etcd.Store.GetTask(ctx, id)
	if err != nil || task.CloudInit == nil || task.Hostname != "web-21" || len(task.SSHAuthorizedKeys) != 1 || !strings.Contains(task.UserData, secret) {
		t.Fatalf("stored task: %+v %v", task.CloudInit, err)
	}
	code, page := get(t, base+"/tasks/"+id)
	if code != 200 || strings.Contains(page, secret) || !strings.Contains(page, "masked:") || !strings.Contains(page, "web-21") {
		t.Fatalf("task page: %d, secret shown or no cloud-init block:\n%s", code, page)
	}
	// Reported: the plan places the seed, and the page and its approval dialog say where.
	if _, err := etcd.Store.Report(ctx, "dc1", "52:54:00:00:00:21", json.RawMessage(testHardware)); err != nil {
		t.Fatal(err)
	}
	code, page = get(t, base+"/tasks/"+id)
	if code != 200 || !strings.Contains(page, "seed: gpt partition 3 (CIDATA") || !strings.Contains(page, "Then adds the cloud-init seed: gpt partition 3 labelled CIDATA") {
		t.Fatalf("task page with a seed plan: %d\n%s", code, page)
	}
}
