package store_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// Registrations round trip, audited in the control scope; every hostile value is
// refused as invalid with etcd unchanged; a value that no longer parses is named, not
// served; watchers hear of every change.
func TestRegionClusters(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)

	changed := make(chan struct{}, 16)
	go s.WatchRegionClusters(ctx, func() { changed <- struct{}{} })
	heard := func(what string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatalf("no watch call after %s", what)
		}
	}
	heard("the watch started")

	before := e.Dump(t, "/")
	for name, c := range map[string]store.RegionCluster{
		"no region":         {Endpoints: []string{"https://10.2.0.1:2379"}},
		"bad region":        {Region: "DC2", Endpoints: []string{"https://10.2.0.1:2379"}},
		"path in region":    {Region: "../auth", Endpoints: []string{"https://10.2.0.1:2379"}},
		"no endpoints":      {Region: "dc2"},
		"empty endpoint":    {Region: "dc2", Endpoints: []string{""}},
		"two in one":        {Region: "dc2", Endpoints: []string{"https://a:2379,https://b:2379"}},
		"other scheme":      {Region: "dc2", Endpoints: []string{"ftp://10.2.0.1:2379"}},
		"path in endpoint":  {Region: "dc2", Endpoints: []string{"https://10.2.0.1:2379/v3"}},
		"no host":           {Region: "dc2", Endpoints: []string{"https://"}},
		"space":             {Region: "dc2", Endpoints: []string{"10.2.0.1 :2379"}},
		"password in user":  {Region: "dc2", Endpoints: []string{"https://10.2.0.1:2379"}, User: "ctl:secret"},
		"cert without key":  {Region: "dc2", Endpoints: []string{"https://10.2.0.1:2379"}, Cert: "/etc/lpmos/c.crt"},
		"key without cert":  {Region: "dc2", Endpoints: []string{"https://10.2.0.1:2379"}, Key: "/etc/lpmos/c.key"},
		"newline in region": {Region: "dc2\n", Endpoints: []string{"https://10.2.0.1:2379"}},
	} {
		if err := s.PutRegionCluster(ctx, c); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: want ErrInvalid, got %v", name, err)
		}
	}
	if _, err := s.DeleteRegionCluster(ctx, "../auth"); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("delete of a bad region: %v", err)
	}
	if ok, err := s.DeleteRegionCluster(ctx, "dc2"); err != nil || ok {
		t.Errorf("delete of nothing: %v %v", ok, err)
	}
	storetest.AssertSame(t, before, e.Dump(t, "/"))

	dc2 := store.RegionCluster{Region: "dc2", Endpoints: []string{"https://10.2.0.1:2379", "10.2.0.2:2379"},
		CACert: "/etc/lpmos/pki/ca.crt", Cert: "/etc/lpmos/pki/control.crt", Key: "/etc/lpmos/pki/control.key", User: "lpmos-control", PasswordFile: "/etc/lpmos/dc2.pass"}
	if err := s.PutRegionCluster(as(ctx, "alice"), dc2); err != nil {
		t.Fatal(err)
	}
	heard("a registration")
	if err := s.PutRegionCluster(ctx, store.RegionCluster{Region: "dc3", Endpoints: []string{"http://10.3.0.1:2379"}}); err != nil {
		t.Fatal(err)
	}
	heard("a second registration")
	cs, bad, rev, err := s.RegionClusters(ctx)
	if err != nil || len(bad) != 0 || rev == 0 || len(cs) != 2 || cs[1].Region != "dc3" {
		t.Fatalf("RegionClusters: %+v %v %d %v", cs, bad, rev, err)
	}
	if got := cs[0]; got.Region != dc2.Region || strings.Join(got.Endpoints, " ") != strings.Join(dc2.Endpoints, " ") ||
		got.CACert != dc2.CACert || got.Cert != dc2.Cert || got.Key != dc2.Key || got.User != dc2.User || got.PasswordFile != dc2.PasswordFile {
		t.Fatalf("dc2 read back as %+v", got)
	}
	if d := dialConfig(t, dc2); d.Endpoints[1] != "10.2.0.2:2379" {
		t.Fatalf("dial config %+v", d)
	}
	// Audited in the control scope (not the region's keys, which a migration copies).
	entries, err := s.ListAudit(ctx, store.AuditFilter{Action: store.AuditRegionCluster})
	if err != nil || len(entries) != 2 || entries[1].Actor != "alice" || entries[1].Target != "dc2" || entries[1].Region != "" ||
		entries[1].Detail["endpoints"] != "https://10.2.0.1:2379,10.2.0.2:2379" {
		t.Fatalf("audit: %+v %v", entries, err)
	}
	if region, err := s.ListAudit(ctx, store.AuditFilter{Region: "dc2"}); err != nil || len(region) != 0 {
		t.Fatalf("dc2's own audit holds the registration: %+v %v", region, err)
	}

	// A value that no longer parses (written by hand, or by a future version) is named.
	for key, v := range map[string]string{
		"/os/federation/clusters/dc4": "{not json",
		"/os/federation/clusters/dc5": `{"region":"dc6","endpoints":["http://10.6.0.1:2379"]}`,
		"/os/federation/clusters/dc7": `{"region":"dc7","endpoints":["ftp://10.7.0.1"]}`,
	} {
		if _, err := e.Client.Put(ctx, key, v); err != nil {
			t.Fatal(err)
		}
		heard("a hand-written value")
	}
	cs, bad, _, err = s.RegionClusters(ctx)
	if err != nil || len(cs) != 2 || strings.Join(bad, ",") != "dc4,dc5,dc7" {
		t.Fatalf("with bad values: %+v bad %v %v", cs, bad, err)
	}

	if ok, err := s.DeleteRegionCluster(ctx, "dc2"); err != nil || !ok {
		t.Fatalf("delete dc2: %v %v", ok, err)
	}
	heard("a removal")
	if _, ok := e.Get(t, "/os/federation/clusters/dc2"); ok {
		t.Fatal("dc2's registration still there")
	}
	if entries, _ := s.ListAudit(ctx, store.AuditFilter{Action: store.AuditRegionCluster}); len(entries) != 3 || entries[0].Detail["removed"] != "true" {
		t.Fatalf("removal audit: %+v", entries)
	}
}

func dialConfig(t *testing.T, c store.RegionCluster) store.DialConfig {
	t.Helper()
	d := c.DialConfig()
	if d.CACert != c.CACert || d.Cert != c.Cert || d.Key != c.Key || d.User != c.User || d.PasswordFile != c.PasswordFile || d.Password != "" {
		t.Fatalf("DialConfig of %+v: %+v", c, d)
	}
	return d
}
