package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// BenchmarkReport measures matching a report with 100, 1,000 and 10,000 tasks in the
// region. The MAC index makes it two point reads and one guarded write whatever the
// count, so ns/op should stay flat.
func BenchmarkReport(b *testing.B) {
	e := storetest.Start(b)
	ctx := context.Background()
	have := 0
	hw := json.RawMessage(`{"cpu":{"cores":8},"memory":{"total_bytes":34359738368}}`)
	for _, n := range []int{100, 1000, 10000} {
		for ; have < n; have++ {
			mac := fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", have>>24&0xff, have>>16&0xff, have>>8&0xff, have&0xff)
			if _, err := e.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}}); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) {
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := (i * 7919) % n
				mac := fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", k>>24&0xff, k>>16&0xff, k>>8&0xff, k&0xff)
				res, err := e.Store.Report(ctx, "dc1", mac, hw)
				if err != nil || !res.Matched {
					b.Fatalf("%s: %+v %v", mac, res, err)
				}
			}
		})
	}
}
