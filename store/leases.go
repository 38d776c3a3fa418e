package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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
