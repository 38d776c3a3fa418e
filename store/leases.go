package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// DHCPLease is a full-DHCP lease as kept at /os/dhcp/leases/{region}/{ip}, so an
// appliance restarted (or replaced) never hands out an address still in use.
type DHCPLease struct {
	MAC      string    `json:"mac"`
	IP       string    `json:"ip"`
	Expiry   time.Time `json:"expiry"`
	Hostname string    `json:"hostname,omitempty"`
}

// ListLeases returns the region's stored leases.
func (s *Store) ListLeases(ctx context.Context, region string) ([]DHCPLease, error) {
	resp, err := s.c.Get(ctx, leasePrefix(region), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	out := make([]DHCPLease, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var l DHCPLease
		if err := json.Unmarshal(kv.Value, &l); err != nil {
			return nil, fmt.Errorf("lease %s: %w", kv.Key, err)
		}
		out = append(out, l)
	}
	return out, nil
}

// PutLease stores l, replacing any lease for its IP.
func (s *Store) PutLease(ctx context.Context, region string, l DHCPLease) error {
	b, _ := json.Marshal(l)
	if _, err := s.c.Put(ctx, leaseKey(region, l.IP), string(b)); err != nil {
		return fmt.Errorf("store lease %s: %w", l.IP, err)
	}
	return nil
}

// DeleteLease removes the lease for ip (absent is fine).
func (s *Store) DeleteLease(ctx context.Context, region, ip string) error {
	if _, err := s.c.Delete(ctx, leaseKey(region, ip)); err != nil {
		return fmt.Errorf("delete lease %s: %w", ip, err)
	}
	return nil
}

// maxTxnOps is etcd's default --max-txn-ops; ApplyLeases splits larger
// batches into several transactions.
const maxTxnOps = 128

// ApplyLeases stores puts and removes deletes (IPs) for region in as few etcd
// transactions as fit (one per 128 operations, etcd's default limit): one
// fsync for a whole group of leases. A key named more than once counts once:
// the last put for an IP wins, and a put wins over a delete of the same IP.
// On error some of the transactions may be stored: the caller answers none of the group.
func (s *Store) ApplyLeases(ctx context.Context, region string, puts []DHCPLease, deletes []string) error {
	last := make(map[string]int, len(puts))
	for i, l := range puts {
		last[l.IP] = i
	}
	ops := make([]clientv3.Op, 0, len(puts)+len(deletes))
	seen := make(map[string]bool, len(deletes))
	for _, ip := range deletes {
		if _, put := last[ip]; put || seen[ip] {
			continue
		}
		seen[ip] = true
		ops = append(ops, clientv3.OpDelete(leaseKey(region, ip)))
	}
	for i, l := range puts {
		if last[l.IP] != i {
			continue
		}
		b, _ := json.Marshal(l)
		ops = append(ops, clientv3.OpPut(leaseKey(region, l.IP), string(b)))
	}
	// The transactions run at once: every key appears once, so their order does not
	// matter, and etcd's raft batches concurrent proposals into one fsync (one after
	// another, a group of 1,000 leases cost 8 fsyncs).
	var g errgroup.Group
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		chunk := ops[:n]
		g.Go(func() error {
			if _, err := s.c.Txn(ctx).Then(chunk...).Commit(); err != nil {
				return fmt.Errorf("store %d lease changes: %w", len(chunk), err)
			}
			return nil
		})
		ops = ops[n:]
	}
	return g.Wait()
}
