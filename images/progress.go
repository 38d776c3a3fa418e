package images

import (
	"sync"
	"sync/atomic"
	"time"
)

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
