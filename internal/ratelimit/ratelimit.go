// Package ratelimit is token buckets: one (Bucket), or one per key (Keyed: per source
// address, per MAC, per user name) with bounded memory. Callers pass the time, so tests
// need no clock of their own.
package ratelimit

import (
	"sync"
	"time"
)

// Bucket allows burst events at once, refilled at one per every.
type Bucket struct {
	mu    sync.Mutex
	burst float64
	every time.Duration
	have  float64
	last  time.Time
}

// NewBucket returns a full bucket.
func NewBucket(burst int, every time.Duration) *Bucket {
	return &Bucket{burst: float64(burst), every: every, have: float64(burst)}
}

// Allow takes one event if there is one.
func (b *Bucket) Allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.have = min(b.burst, b.have+float64(now.Sub(b.last))/float64(b.every))
	}
	b.last = now
	if b.have < 1 {
		return false
	}
	b.have--
	return true
}

// maxKeys bounds a Keyed's memory: a flood of invented keys resets the table rather
// than growing it (which briefly forgives everyone: acceptable for a flood guard).
const maxKeys = 100_000

// Keyed is a Bucket per key. A zero burst allows everything.
type Keyed struct {
	burst int
	every time.Duration
	mu    sync.Mutex
	m     map[string]*Bucket
}

// NewKeyed returns buckets of burst, refilled at one per every.
func NewKeyed(burst int, every time.Duration) *Keyed {
	return &Keyed{burst: burst, every: every, m: map[string]*Bucket{}}
}

// Allow takes one event from key's bucket.
func (k *Keyed) Allow(key string, now time.Time) bool {
	if k.burst <= 0 {
		return true
	}
	k.mu.Lock()
	b := k.m[key]
	if b == nil {
		if len(k.m) >= maxKeys {
			clear(k.m)
		}
		b = NewBucket(k.burst, k.every)
		k.m[key] = b
	}
	k.mu.Unlock()
	return b.Allow(now)
}

// Every is how long one event takes to come back (for a retry_after).
func (k *Keyed) Every() time.Duration { return k.every }
