package store_test

import (
	"testing"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// With client-certificate auth the CN is the etcd user: roles made without passwords,
// auth enabled with a certificate-only root; region-dc2's certificate reaches dc2's
// keys and is refused dc1's, lpmos-control's reaches both.
func TestRegionRolesByCertificate(t *testing.T) {
	e := storetest.StartTLS(t)
	ctx := ctxT(t)
	for _, step := range []func() error{
		func() error { return e.Store.EnsureControlRole(ctx, "") },
		func() error { return e.Store.EnsureRegionRole(ctx, "dc1", "") },
		func() error { return e.Store.EnsureRegionRole(ctx, "dc2", "") },
		func() error { return e.Store.EnableAuth(ctx, "") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	open := func(cn string) *store.Store {
		s, err := store.Open(ctx, store.DialConfig{Endpoints: e.Endpoints, Credentials: e.PKI.Client(t, cn)})
		if err != nil {
			t.Fatalf("open as %s: %v", cn, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	ctl, dc2 := open(store.ControlUser), open(store.RegionUser("dc2"))
	for _, r := range []string{"dc1", "dc2"} {
		if _, err := ctl.CreateTask(ctx, store.NewTask{RegionID: r, TargetMAC: "52:54:00:00:00:0" + r[2:], OSRef: ubuntuImage.OSRef}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dc2.OpenTaskForMAC(ctx, "dc2", "52:54:00:00:00:02"); err != nil {
		t.Fatalf("dc2 reads its task: %v", err)
	}
	if _, err := dc2.OpenTaskForMAC(ctx, "dc1", "52:54:00:00:00:01"); !store.PermissionDenied(err) {
		t.Fatalf("dc2 reading dc1's task: want permission denied, got %v", err)
	}
}
