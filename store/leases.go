package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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

// LeaseWriter stores lease groups through an in-process client of the appliance's
// embedded etcd (etcdserver.LocalClient) when there is one, else through the regular
// client. The in-process path skips gRPC and loopback TCP: at 1000 DORA/s they were
// a fifth of the appliance's CPU. Durability is the same (the same server path: a
// transaction returns once it is in the WAL, fsynced, and applied). The in-process
// client has no etcd user: when etcd's authentication is on (an operator turned it on
// for the region), its writes are refused before anything is stored, and from then on
// every group goes through the regular client, which carries the credentials.
type LeaseWriter struct {
	std, local *Store
	stdOnly    atomic.Bool
}

// NewLeaseWriter writes through local (nil: none) and falls back to std.
func NewLeaseWriter(std, local *Store) *LeaseWriter {
	w := &LeaseWriter{std: std, local: local}
	w.stdOnly.Store(local == nil)
	return w
}

// InProcess reports whether groups still go through the in-process client.
func (w *LeaseWriter) InProcess() bool { return !w.stdOnly.Load() }

// ListLeases is Store.ListLeases through the regular client (read once at start).
func (w *LeaseWriter) ListLeases(ctx context.Context, region string) ([]DHCPLease, error) {
	return w.std.ListLeases(ctx, region)
}

// ApplyLeases is Store.ApplyLeases, in-process while etcd lets it.
func (w *LeaseWriter) ApplyLeases(ctx context.Context, region string, puts []DHCPLease, deletes []string) error {
	if !w.stdOnly.Load() {
		err := w.local.ApplyLeases(ctx, region, puts, deletes)
		if !authRefused(err) {
			return err
		}
		w.stdOnly.Store(true)
	}
	return w.std.ApplyLeases(ctx, region, puts, deletes)
}

// authRefused: etcd refused a request for want of (the right) user. Auth is checked
// before a transaction is applied, so nothing of a refused one is stored.
func authRefused(err error) bool {
	return err != nil && (errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrPermissionDenied) ||
		errors.Is(err, rpctypes.ErrInvalidAuthToken) || errors.Is(err, rpctypes.ErrAuthOldRevision))
}
