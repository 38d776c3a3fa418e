package control_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
)

// An open dashboard follows a region on its own etcd through a WAN cut without a
// reload: "unreachable since hh:mm UTC" and stale marks on the region and its task
// rows while cut, then online and fresh again.
func TestMixedLayoutsInBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		fmt.Fprintf(os.Stderr, "\n*** SKIPPING TestMixedLayoutsInBrowser: %s not found (apt-get install chromium): the web UI is NOT tested ***\n\n", chromiumPath)
		t.Skipf("SKIP LOUDLY: %s not found", chromiumPath)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	home, dc2, link, cp := startMixed(t, ctx)
	base := cp.URL()
	password, _ := withAdmin(t, home.Store, base)
	for _, r := range []struct {
		name string
		st   *store.Store
	}{{"dc1", home.Store}, {"dc2", dc2.Store}} {
		hb, err := r.st.StartHeartbeat(ctx, func() store.Heartbeat { return store.Heartbeat{Region: r.name} }, 10*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hb.Stop(context.Background()) })
	}
	tk, err := dc2.Store.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "02:00:00:00:02:01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := dc2.Store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "dc2's mirror at its revision", func() bool {
		r, ok := cp.Fleet().MirrorRevision("dc2")
		return ok && r >= rev
	})

	b := newBrowser(t, ctx)
	b.login(base, "admin", password)
	row := `document.querySelector('tr[data-task="` + tk.TaskID + `"] [data-field="stale"]')`
	health := `document.querySelector('#region-dc2 [data-field="health"]')`
	regionStale := `document.querySelector('#region-dc2 [data-field="region-stale"]')`
	b.do("open the dashboard", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("region-dc2")))
	b.poll("the live push is connected", `document.getElementById("live-status").textContent === "live"`)
	if !b.eval(row + `.hidden && ` + regionStale + `.hidden && ` + health + `.textContent === "online"`) {
		t.Fatal("dc2 is not shown online and fresh before the cut")
	}
	b.mark()

	link.Cut()
	b.poll("dc2 unreachable, pushed", health+`.textContent.startsWith("unreachable since ") && `+health+`.textContent.endsWith(" UTC") && !`+regionStale+`.hidden`)
	b.poll("dc2's task row stale, pushed", `!`+row+`.hidden`)
	b.shot("federation-dc2-unreachable")

	link.Restore(t)
	b.poll("dc2 online and fresh again, pushed", health+`.textContent === "online" && `+regionStale+`.hidden && `+row+`.hidden`)
	b.checkMark()
}
