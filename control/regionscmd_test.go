package control_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// regions add, enable-auth, then add with root's credentials: each region's user
// reaches its own keys only, the control plane's user reaches everything (users,
// sessions on leases, tasks), and without credentials the command says what it needs.
func TestRegionsCommand(t *testing.T) {
	e := storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	secret := func(name, pw string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}

	if _, _, err := runCLI(t, e, "", "regions", "add", "DC_2"); err == nil || !strings.Contains(err.Error(), "region_id") {
		t.Fatalf("bad region name: %v", err)
	}
	if _, _, err := runCLI(t, e, "", "regions", "add", "dc2", "--password-file", secret("empty", "")); err == nil || !strings.Contains(err.Error(), "--password-file") {
		t.Fatalf("empty password file: %v", err)
	}
	out, _, err := runCLI(t, e, "", "regions", "add", "dc2", "--password-file", secret("dc2", "dc2-secret"))
	if err != nil || !strings.Contains(out, "region-dc2") || !strings.Contains(out, "readwrite /os/install/task/dc2/ (prefix)") {
		t.Fatalf("regions add dc2: %q %v", out, err)
	}
	if _, _, err := runCLI(t, e, "", "regions", "enable-auth",
		"--root-password-file", secret("root", "root-secret"), "--control-password-file", secret("control", "control-secret")); err != nil {
		t.Fatalf("enable-auth: %v", err)
	}
	if _, _, err := runCLI(t, e, "", "regions", "add", "dc3"); !store.CredentialsRefused(err) || !strings.Contains(err.Error(), "--etcd-user") {
		t.Fatalf("regions add without credentials once auth is on: %v", err)
	}
	out, _, err = runCLI(t, e, "", "regions", "add", "dc3", "--password-file", secret("dc3", "dc3-secret"), "--etcd-user", "root", "--etcd-password", "root-secret")
	if err != nil || !strings.Contains(out, "readwrite /os/audit/dc3/ (prefix)") {
		t.Fatalf("regions add dc3 as root: %q %v", out, err)
	}
	// enable-auth again: nothing changes, nothing fails.
	if _, _, err := runCLI(t, e, "", "regions", "enable-auth", "--etcd-user", "root", "--etcd-password", "root-secret"); err != nil {
		t.Fatalf("enable-auth again: %v", err)
	}

	open := func(user, pw string) *store.Store {
		s, err := store.OpenUser(ctx, e.Endpoints, user, pw)
		if err != nil {
			t.Fatalf("open as %s: %v", user, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	ctl := open(store.ControlUser, "control-secret")
	dc2, dc3 := open("region-dc2", "dc2-secret"), open("region-dc3", "dc3-secret")
	if created, _, err := ctl.Bootstrap(ctx, "admin", "a long admin password", time.Hour); err != nil || !created {
		t.Fatalf("bootstrap as %s: %v %v", store.ControlUser, created, err)
	}
	_, cookie, _, err := ctl.Login(ctx, "admin", "a long admin password", store.SessionLimits{Idle: time.Hour, Max: time.Hour})
	if err != nil {
		t.Fatalf("login (a session on a lease) as %s: %v", store.ControlUser, err)
	}
	if err := ctl.Logout(ctx, cookie); err != nil {
		t.Fatalf("logout (revokes the lease): %v", err)
	}
	for _, r := range []string{"dc2", "dc3"} {
		if _, err := ctl.CreateTask(ctx, store.NewTask{RegionID: r, TargetMAC: "52:54:00:00:0" + r[2:] + ":01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dc2.OpenTaskForMAC(ctx, "dc2", "52:54:00:00:02:01"); err != nil {
		t.Fatalf("dc2 reads its task: %v", err)
	}
	if _, err := dc2.OpenTaskForMAC(ctx, "dc3", "52:54:00:00:03:01"); !store.PermissionDenied(err) {
		t.Fatalf("dc2 reading dc3's task: want permission denied, got %v", err)
	}
	if _, err := dc3.ListUnmatched(ctx, "dc2"); !store.PermissionDenied(err) {
		t.Fatalf("dc3 reading dc2's unmatched reports: want permission denied, got %v", err)
	}
	if _, err := dc2.ListUsers(ctx); !store.PermissionDenied(err) {
		t.Fatalf("dc2 reading the control plane's users: want permission denied, got %v", err)
	}
}
