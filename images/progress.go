package images

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// String is a one-line summary for logs and the agent's progress message,
// e.g. "downloading 44.0% (451 MiB of 1.0 GiB) 310 MB/s, ETA 2s".
func (p Progress) String() string {
	s := fmt.Sprintf("%s %.1f%% (%s of %s)", p.Stage, p.Percent(), iec(p.Done), iec(p.Total))
	if p.Rate > 0 {
		s += fmt.Sprintf(" %.0f MB/s", p.Rate/1e6)
	}
	if p.ETA > 0 {
		s += ", ETA " + p.ETA.Round(time.Second).String()
	}
	if p.Retries > 0 {
		s += fmt.Sprintf(", %d resumed", p.Retries)
	}
	return s
}

func iec(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// reporter calls the Progress callback every interval and at each stage
// change, never concurrently. Workers only bump the done counter.
type reporter struct {
	fn         func(Progress)
	interval   time.Duration
	done       atomic.Int64
	downloaded *atomic.Int64
	retries    *atomic.Int64

	mu       sync.Mutex
	stage    Stage
	total    int64
	lastT    time.Time
	lastDone int64
	rate     float64

	stopc chan struct{}
	wg    sync.WaitGroup
}

func newReporter(fn func(Progress), interval time.Duration, downloaded, retries *atomic.Int64) *reporter {
	r := &reporter{fn: fn, interval: interval, downloaded: downloaded, retries: retries, stopc: make(chan struct{})}
	if fn == nil {
		return r
	}
	r.wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.emit()
			case <-r.stopc:
				return
			}
		}
	})
	return r
}

// set starts a stage and reports it at once.
func (r *reporter) set(s Stage, total, done int64) {
	r.mu.Lock()
	r.stage, r.total = s, total
	r.done.Store(done)
	r.lastT, r.lastDone, r.rate = time.Now(), done, 0
	r.mu.Unlock()
	r.emit()
}

func (r *reporter) emit() {
	if r.fn == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now, done := time.Now(), r.done.Load()
	if dt := now.Sub(r.lastT).Seconds(); dt >= r.interval.Seconds()/2 {
		inst := float64(done-r.lastDone) / dt
		if r.rate == 0 {
			r.rate = inst
		} else {
			// Smooth over a few intervals so the ETA does not jump around.
			r.rate = 0.6*r.rate + 0.4*inst
		}
		r.lastT, r.lastDone = now, done
	}
	p := Progress{
		Stage:      r.stage,
		Done:       done,
		Total:      r.total,
		Rate:       r.rate,
		Downloaded: r.downloaded.Load(),
		Retries:    int(r.retries.Load()),
	}
	if r.rate > 0 && done < r.total {
		p.ETA = time.Duration(float64(r.total-done) / r.rate * float64(time.Second))
	}
	r.fn(p)
}

func (r *reporter) stop() {
	close(r.stopc)
	r.wg.Wait()
}
