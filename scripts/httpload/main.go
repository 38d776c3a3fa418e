// Command httpload: -clients concurrent clients each fetch every -path once,
// in order, over its own connection (one netboot: kernel then initramfs),
// from -base. Prints aggregate throughput and per-boot latency percentiles.
// Used by scripts/bench-sidebyside.sh; it talks only to -base.
// Output: "ok N/M MBps X p50 Ys p99 Zs".
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

func main() {
	base := flag.String("base", "", "http://host:port")
	paths := flag.String("paths", "", "comma-separated paths fetched in order by each client")
	clients := flag.Int("clients", 500, "concurrent clients")
	flag.Parse()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lat []float64
	var bytes int64
	ok := 0
	start := time.Now()
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}, Timeout: 10 * time.Minute}
			t0 := time.Now()
			var n int64
			for _, p := range strings.Split(*paths, ",") {
				r, err := cl.Get(*base + p)
				if err != nil {
					log.Print(err)
					return
				}
				m, err := io.Copy(io.Discard, r.Body)
				r.Body.Close()
				if err != nil || r.StatusCode != 200 {
					log.Print(p, r.StatusCode, err)
					return
				}
				n += m
			}
			d := time.Since(t0).Seconds()
			mu.Lock()
			lat = append(lat, d)
			bytes += n
			ok++
			mu.Unlock()
		}()
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	sort.Float64s(lat)
	pc := func(q float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(q*float64(len(lat)-1))]
	}
	fmt.Printf("ok %d/%d MBps %.1f p50 %.3f p99 %.3f\n", ok, *clients, float64(bytes)/wall/1e6, pc(0.5), pc(0.99))
}
