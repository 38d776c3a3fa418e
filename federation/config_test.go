package federation_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/store"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "regions.yaml")
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestLoadRegionsFile(t *testing.T) {
	cs, err := federation.LoadRegionsFile(writeFile(t, `regions:
  - name: dc2
    endpoints: [https://10.2.0.1:2379, https://10.2.0.2:2379]
    cacert: /etc/lpmos/pki/ca.crt
    cert: /etc/lpmos/pki/control.crt
    key: /etc/lpmos/pki/control.key
    user: lpmos-control
    password_file: /etc/lpmos/dc2.pass
  - name: dc3
    endpoints: [10.3.0.1:2379]
`))
	if err != nil || len(cs) != 2 {
		t.Fatalf("load: %+v %v", cs, err)
	}
	want := store.RegionCluster{Region: "dc2", Endpoints: []string{"https://10.2.0.1:2379", "https://10.2.0.2:2379"},
		CACert: "/etc/lpmos/pki/ca.crt", Cert: "/etc/lpmos/pki/control.crt", Key: "/etc/lpmos/pki/control.key",
		User: "lpmos-control", PasswordFile: "/etc/lpmos/dc2.pass"}
	if got := cs[0]; got.Region != want.Region || strings.Join(got.Endpoints, ",") != strings.Join(want.Endpoints, ",") || got.CACert != want.CACert ||
		got.Cert != want.Cert || got.Key != want.Key || got.User != want.User || got.PasswordFile != want.PasswordFile {
		t.Fatalf("dc2: %+v", got)
	}
	if cs[1].Region != "dc3" || cs[1].Endpoints[0] != "10.3.0.1:2379" || cs[1].CACert != "" {
		t.Fatalf("dc3: %+v", cs[1])
	}
	if cs, err := federation.LoadRegionsFile(writeFile(t, "")); err != nil || len(cs) != 0 {
		t.Fatalf("empty file: %+v %v", cs, err)
	}

	for name, tc := range map[string]struct{ body, want string }{
		"unknown field":      {"regions:\n  - name: dc2\n    endpoint: [https://10.2.0.1:2379]\n", "endpoint"},
		"unknown top field":  {"region:\n  - name: dc2\n", "region"},
		"duplicate region":   {"regions:\n  - {name: dc2, endpoints: [10.2.0.1:2379]}\n  - {name: dc2, endpoints: [10.2.0.2:2379]}\n", "dc2 is named twice"},
		"bad endpoint":       {"regions:\n  - {name: dc2, endpoints: [\"ftp://10.2.0.1:2379\"]}\n", "not an http:// or https://"},
		"no endpoint":        {"regions:\n  - {name: dc2}\n", "at least one etcd endpoint"},
		"password in user":   {"regions:\n  - {name: dc2, endpoints: [10.2.0.1:2379], user: \"ctl:secret\"}\n", "password_file"},
		"bad region":         {"regions:\n  - {name: DC2, endpoints: [10.2.0.1:2379]}\n", "region_id"},
		"cert without key":   {"regions:\n  - {name: dc2, endpoints: [10.2.0.1:2379], cert: /c.crt}\n", "cert and key"},
		"not yaml":           {"regions: [\n", "--regions-file"},
		"endpoints a string": {"regions:\n  - {name: dc2, endpoints: https://10.2.0.1:2379}\n", "--regions-file"},
	} {
		_, err := federation.LoadRegionsFile(writeFile(t, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--regions-file") {
			t.Errorf("%s: want an error saying %q, got %v", name, tc.want, err)
		}
	}
	if _, err := federation.LoadRegionsFile(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseRegionFlag(t *testing.T) {
	def := store.Credentials{CACert: "/ca.crt", Cert: "/c.crt", Key: "/c.key", User: "lpmos-control", PasswordFile: "/pw", Password: "not copied"}
	c, err := federation.ParseRegionFlag("dc2=https://a:2379,https://b:2379", def)
	if err != nil || c.Region != "dc2" || strings.Join(c.Endpoints, " ") != "https://a:2379 https://b:2379" ||
		c.CACert != "/ca.crt" || c.Cert != "/c.crt" || c.Key != "/c.key" || c.User != "lpmos-control" || c.PasswordFile != "/pw" {
		t.Fatalf("parse: %+v %v", c, err)
	}
	for v, want := range map[string]string{
		"dc2":                    "NAME=ENDPOINT",
		"dc2=":                   "NAME=ENDPOINT",
		"=https://a:2379":        "region_id",
		"DC2=https://a:2379":     "region_id",
		"dc2=ftp://a:2379":       "not an http",
		"dc2=https://a:2379,":    "not an etcd endpoint",
		"dc2=https://a:2379/v3":  "not an http",
		"dc2=https://a:2379 b:1": "not an etcd endpoint",
	} {
		if _, err := federation.ParseRegionFlag(v, store.Credentials{}); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--region") {
			t.Errorf("--region %q: want an error saying %q, got %v", v, want, err)
		}
	}
	// The control plane's credentials with a password in user (USER:PASSWORD) are not
	// stored: the password would end up in etcd.
	if _, err := federation.ParseRegionFlag("dc2=https://a:2379", store.Credentials{User: "ctl:secret"}); err == nil || !strings.Contains(err.Error(), "password_file") {
		t.Errorf("user with a password: %v", err)
	}
}

func TestMergeStatic(t *testing.T) {
	rc := func(region, ep string) store.RegionCluster {
		return store.RegionCluster{Region: region, Endpoints: []string{ep}}
	}
	file := []store.RegionCluster{rc("dc2", "https://file2:2379"), rc("dc3", "https://file3:2379")}
	flags := []store.RegionCluster{rc("dc3", "https://flag3:2379"), rc("dc4", "https://flag4:2379")}
	got := federation.MergeStatic(file, flags)
	var s []string
	for _, c := range got {
		s = append(s, c.Region+"="+c.Endpoints[0])
	}
	if want := "dc3=https://flag3:2379 dc4=https://flag4:2379 dc2=https://file2:2379"; strings.Join(s, " ") != want {
		t.Fatalf("merged %v, want %s", s, want)
	}
	if got := federation.MergeStatic(nil, nil); len(got) != 0 {
		t.Fatalf("nothing merged: %v", got)
	}
	// The inputs are not changed.
	if file[1].Endpoints[0] != "https://file3:2379" || len(flags) != 2 {
		t.Fatal("MergeStatic changed its inputs")
	}
}
