package appliance

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestConfigFlagsAndEnv(t *testing.T) {
	env := map[string]string{"REGION_LABEL": "dc2", "API_PORT": "9000", "ETCD_ENDPOINTS": "e1:2379, e2:2379"}
	getenv := func(k string) string { return env[k] }
	c, err := ParseConfig(nil, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Label != "dc2" || c.APIPort != 9000 || strings.Join(c.EtcdEndpoints, ",") != "e1:2379,e2:2379" {
		t.Fatalf("from env: %+v", c)
	}
	// Flags win over the environment.
	c, err = ParseConfig([]string{"--label=dc1", "--api-port=8081", "--etcd-endpoints=x:1", "--heartbeat-ttl=3s"}, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Label != "dc1" || c.APIPort != 8081 || strings.Join(c.EtcdEndpoints, ",") != "x:1" || c.HeartbeatTTL != 3*time.Second {
		t.Fatalf("flags: %+v", c)
	}
	// No endpoints: embedded etcd with etcd's defaults.
	c, err = ParseConfig([]string{"--label=dc1"}, func(string) string { return "" }, io.Discard)
	if err != nil || len(c.EtcdEndpoints) != 0 || c.EtcdDataDir != "dc1.etcd" || c.EtcdListenClientURLs != "http://127.0.0.1:2379" || c.APIPort != 8081 {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	if c.MaxStreams != 64 || c.MaxStreamsPerSource != 4 || c.MinStreamRate != 64<<10 || c.MinStreamWindow != 30*time.Second {
		t.Fatalf("image stream defaults: %+v", c)
	}
	for _, bad := range [][]string{{}, {"--label=DC1"}, {"--label=dc_1"}, {"--label=dc1", "--api-port=70000"}, {"--label=dc1", "extra"},
		{"--label=dc1", "--max-streams-per-source=-1"}, {"--label=dc1", "--min-stream-window=0s"},
		{"--label=dc1", "--image-rate=1000", "--min-stream-rate=2000"}} {
		if _, err := ParseConfig(bad, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
	if _, err := ParseConfig(nil, func(k string) string { return map[string]string{"REGION_LABEL": "dc1", "API_PORT": "x"}[k] }, io.Discard); err == nil || !strings.Contains(err.Error(), "API_PORT") {
		t.Errorf("bad API_PORT: %v", err)
	}
}
