package federation_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/federation/fedtest"
	"lpmos.dev/lpmos/internal/pki"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// logSink is a log for tests to search, safe for the fleet's goroutines.
type logSink struct{ syncbuf.Buffer }

// line is the first log line holding every one of words ("" when none does).
func (l *logSink) line(words ...string) string {
	for _, ln := range strings.Split(l.String(), "\n") {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(ln, w)
		}
		if ok {
			return ln
		}
	}
	return ""
}

func startLoggedFleet(t *testing.T, home *store.Store, static []store.RegionCluster) (*federation.Fleet, context.Context, *logSink) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	logs := &logSink{}
	f := federation.New(home, static, slog.New(slog.NewTextHandler(logs, nil)))
	f.Start(ctx)
	t.Cleanup(func() {
		cancel()
		f.Wait()
		if t.Failed() {
			t.Logf("the fleet's log:\n%s", logs.String())
		}
	})
	return f, ctx, logs
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	// Written beside and renamed over, as an operator's tooling replaces a file: a
	// reader never sees half of it.
	tmp := to + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, to); err != nil {
		t.Fatal(err)
	}
}

func reachable(ctx context.Context, f *federation.Fleet, region string) bool {
	r, err := f.GetRegion(ctx, region)
	return err == nil && r.Cluster == federation.ClusterOwn && r.Reachable
}

// A region cluster on TLS with client-certificate auth, named statically with a CA
// file that holds another CA: unreachable from the start with a log line naming the
// TLS problem, its writes refused at once, nothing written there. The file fixed in
// place (the same path) is picked up by the background redial: reachable, tasks land
// in that cluster. A registration (in the control plane's etcd) of another TLS cluster
// is followed; changed to a client certificate of a foreign CA it goes unreachable
// (logged), changed back it comes back, the other region unaffected throughout.
func TestFleetTLSConfigFixedWhileRunning(t *testing.T) {
	home, dc2, dc3 := storetest.Start(t), storetest.StartTLS(t), storetest.StartTLS(t)
	foreign := storetest.NewPKI(t)
	caFile := filepath.Join(t.TempDir(), "dc2-ca.crt")
	copyFile(t, foreign.CACert(), caFile)
	dc2Entry := store.RegionCluster{Region: "dc2", Endpoints: dc2.Endpoints, CACert: caFile, Cert: dc2.Root.Cert, Key: dc2.Root.Key}
	start := time.Now()
	f, ctx, logs := startLoggedFleet(t, home.Store, []store.RegionCluster{dc2Entry})
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("start beside a region cluster of the wrong CA took %s", d)
	}
	r, err := f.GetRegion(ctx, "dc2")
	if err != nil || r.Reachable || r.UnreachableSince == nil || !r.Stale {
		t.Fatalf("dc2 with the wrong CA: %+v %v", r, err)
	}
	eventually(t, 3*time.Second, "a log line naming the CA problem", func() bool {
		return logs.line("region=dc2", "does not vouch for", caFile, "the --regions-file entry or --region flag of dc2") != ""
	})
	t.Logf("%s", logs.line("region=dc2", "does not vouch for"))
	dc2Before := dc2.Dump(t, "/")
	t0 := time.Now()
	_, err = f.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "02:00:00:00:02:01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	var ue *federation.UnreachableError
	if !errors.As(err, &ue) || ue.Region != "dc2" || time.Since(t0) > 500*time.Millisecond {
		t.Fatalf("create in dc2 with the wrong CA: %v after %s", err, time.Since(t0))
	}
	storetest.AssertSame(t, dc2Before, dc2.Dump(t, "/"))

	copyFile(t, dc2.PKI.CACert(), caFile)
	fixed := time.Now()
	eventually(t, 5*time.Second, "dc2 reachable once its CA file holds the right CA", func() bool { return reachable(ctx, f, "dc2") })
	t.Logf("dc2 reachable %s after its CA file was fixed", time.Since(fixed).Round(time.Millisecond))
	id := newTask(t, ctx, dc2.Store, "dc2", 1) // written straight into dc2
	tk, err := f.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "02:00:00:00:02:02", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dc2.Store.GetTask(ctx, tk.TaskID); err != nil {
		t.Fatalf("the fleet's task is not in dc2's cluster: %v", err)
	}
	eventually(t, 5*time.Second, "dc2's mirror holds both tasks", func() bool {
		_, _, ok1 := f.MirroredTask("dc2", id)
		_, _, ok2 := f.MirroredTask("dc2", tk.TaskID)
		return ok1 && ok2
	})

	// A registration over TLS, then a foreign client certificate, then right again.
	dc3Entry := store.RegionCluster{Region: "dc3", Endpoints: dc3.Endpoints, CACert: dc3.PKI.CACert(), Cert: dc3.Root.Cert, Key: dc3.Root.Key}
	if err := home.Store.PutRegionCluster(ctx, dc3Entry); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "dc3 registered and reachable", func() bool { return reachable(ctx, f, "dc3") })
	alien := foreign.Client(t, "root")
	bad := dc3Entry
	bad.Cert, bad.Key = alien.Cert, alien.Key
	if err := home.Store.PutRegionCluster(ctx, bad); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "dc3 unreachable with a foreign client certificate, logged", func() bool {
		r, err := f.GetRegion(ctx, "dc3")
		return err == nil && !r.Reachable && logs.line("region=dc3", "refused the client certificate", alien.Cert, "the registration of dc3") != ""
	})
	t.Logf("%s", logs.line("region=dc3", "refused the client certificate"))
	if !reachable(ctx, f, "dc2") {
		t.Fatal("dc2 went unreachable with dc3's registration")
	}
	if err := home.Store.PutRegionCluster(ctx, dc3Entry); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "dc3 reachable with its own certificate again", func() bool { return reachable(ctx, f, "dc3") })
	id3 := newTask(t, ctx, dc3.Store, "dc3", 1)
	if _, stale, err := f.GetTask(ctx, id3); err != nil || stale {
		t.Fatalf("dc3's task through the fleet: stale %v, %v", stale, err)
	}
}

// A client certificate renewed in place (the same files, as `lpmos-control certs
// add-region --force` or an operator's tooling writes them) is what the next
// connection presents: the old one expired, a WAN cut and its return must not leave the
// region unreachable until the control plane restarts.
func TestFleetTLSRenewedClientCertificate(t *testing.T) {
	home, dc2 := storetest.Start(t), storetest.StartTLS(t)
	link := fedtest.NewLink(t, strings.TrimPrefix(dc2.Endpoints[0], "https://"))
	certFile, keyFile := filepath.Join(t.TempDir(), "control.crt"), filepath.Join(t.TempDir(), "control.key")
	n := 0
	issue := func(notAfter time.Time) {
		t.Helper()
		n++
		c, k := dc2.PKI.Issue(t, fmt.Sprintf("control-%d", n), pki.Request{CommonName: "root", Kind: pki.Client, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter})
		copyFile(t, c, certFile)
		copyFile(t, k, keyFile)
	}
	const life = 3 * time.Second
	issue(time.Now().Add(life))
	issued := time.Now()
	f, ctx, logs := startLoggedFleet(t, home.Store, []store.RegionCluster{{Region: "dc2", Endpoints: []string{"https://" + link.Addr()},
		CACert: dc2.PKI.CACert(), Cert: certFile, Key: keyFile}})
	eventually(t, 3*time.Second, "dc2 reachable with the short-lived certificate", func() bool { return reachable(ctx, f, "dc2") })
	issue(time.Now().Add(24 * time.Hour)) // renewed in place, before it expires
	// Past the old certificate's end, the link drops: every connection is new.
	time.Sleep(time.Until(issued.Add(life + 200*time.Millisecond))) // the certificate's clock, not a synchronisation
	link.Cut()
	eventually(t, 3*time.Second, "dc2 unreachable while cut", func() bool { r, _ := f.GetRegion(ctx, "dc2"); return !r.Reachable })
	link.Restore(t)
	back := time.Now()
	eventually(t, 8*time.Second, "dc2 reachable again with the renewed certificate", func() bool { return reachable(ctx, f, "dc2") })
	t.Logf("dc2 reachable %s after the link returned, on the renewed certificate", time.Since(back).Round(time.Millisecond))
	if l := logs.line("region=dc2", "client certificate changed on disk", certFile); l == "" {
		t.Error("no log line says the renewed certificate was picked up")
	} else {
		t.Logf("%s", l)
	}
	newTask(t, ctx, dc2.Store, "dc2", 1)
	if _, err := f.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "02:00:00:00:02:09", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}}); err != nil {
		t.Fatalf("create in dc2 after the renewal: %v", err)
	}
}
