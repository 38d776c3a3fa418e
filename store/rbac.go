package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Region isolation is etcd's own RBAC, not ours: each region's appliance dials etcd as
// user region-NAME, whose one role region-NAME may read and write exactly
// RegionPrefixes(NAME); the control plane dials as lpmos-control, whose role covers
// every LPMOS key (ControlPrefix); root (etcd's admin) only administers. With client
// certificate auth the certificate's CN is the user and the users have no password.
// Every function here needs etcd's root (or auth still disabled).

// ControlUser is the control plane's etcd user and the name of its role.
const ControlUser = "lpmos-control"

// rootUser is etcd's administrator; its role "root" is built into etcd.
const rootUser = "root"

// RegionUser is region's etcd user and the name of its role.
func RegionUser(region string) string { return "region-" + region }

// PermissionDenied reports whether err is etcd refusing a request the user's roles do
// not allow. A refused watch carries etcd's reason as text only.
func PermissionDenied(err error) bool {
	return err != nil && (errors.Is(err, rpctypes.ErrPermissionDenied) ||
		strings.HasSuffix(err.Error(), rpctypes.ErrPermissionDenied.Error()))
}

// OpenUser is Open as an etcd user with a password (the regions command's
// administrator, the tests' region-NAME and lpmos-control); an empty user dials without
// one. The binaries' own etcd flags go through Open.
func OpenUser(ctx context.Context, endpoints []string, user, password string) (*Store, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Username: user, Password: password})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v as %q: %w", endpoints, user, err)
	}
	s := New(cli)
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := s.Ping(pctx); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd at %v as %q: %w", endpoints, user, err)
	}
	return s, nil
}

// CredentialsRefused reports whether err is etcd refusing the client's user: none given
// while auth is on, a wrong name or password, or a password for a certificate-only user
// (etcd sends that one as text only).
func CredentialsRefused(err error) bool {
	return err != nil && (errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrAuthFailed) ||
		strings.Contains(err.Error(), "password was given for no password user"))
}

// grant is one permission of a role: [key, end) or, with end "", the key alone.
type grant struct {
	key, end string
	perm     clientv3.PermissionType
}

func prefixGrant(prefix string) grant {
	return grant{key: prefix, end: clientv3.GetPrefixRangeEnd(prefix), perm: clientv3.PermissionType(clientv3.PermReadWrite)}
}

// probeGrant lets Ping read the probe key (which holds nothing).
var probeGrant = grant{key: healthProbeKey, perm: clientv3.PermissionType(clientv3.PermRead)}

// regionGrants is the whole of a region role: read-write on its prefixes, read on the
// probe key.
func regionGrants(region string) []grant {
	var g []grant
	for _, p := range RegionPrefixes(region) {
		g = append(g, prefixGrant(p))
	}
	return append(g, probeGrant)
}

// EnsureRegionRole creates (or corrects) region's etcd role and user region-NAME: the
// role gets read-write on exactly RegionPrefixes(region) and read on the health probe,
// and any other permission it holds is revoked; the user gets that role and no other.
// A password sets the user's password (password auth); "" creates a user without one,
// for client certificate auth (CN region-NAME), and leaves an existing user's alone.
// Idempotent.
func (s *Store) EnsureRegionRole(ctx context.Context, region, password string) error {
	if err := ValidateRegion(region); err != nil {
		return err
	}
	return s.ensureRoleUser(ctx, RegionUser(region), password, regionGrants(region))
}

// EnsureControlRole is EnsureRegionRole for the control plane: user and role
// lpmos-control, read-write on every LPMOS key.
func (s *Store) EnsureControlRole(ctx context.Context, password string) error {
	return s.ensureRoleUser(ctx, ControlUser, password, []grant{prefixGrant(ControlPrefix)})
}

func (s *Store) ensureRoleUser(ctx context.Context, name, password string, want []grant) error {
	if err := s.ensureRole(ctx, name, want); err != nil {
		return fmt.Errorf("etcd role %s: %w", name, err)
	}
	if err := s.ensureUser(ctx, name, password, name); err != nil {
		return fmt.Errorf("etcd user %s: %w", name, err)
	}
	return nil
}

func (s *Store) ensureRole(ctx context.Context, name string, want []grant) error {
	if _, err := s.c.RoleAdd(ctx, name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return err
	}
	cur, err := s.c.RoleGet(ctx, name)
	if err != nil {
		return err
	}
	have := map[[2]string]authpb.Permission_Type{}
	for _, p := range cur.Perm {
		k := [2]string{string(p.Key), string(p.RangeEnd)}
		if !slices.ContainsFunc(want, func(g grant) bool { return g.key == k[0] && g.end == k[1] }) {
			if _, err := s.c.RoleRevokePermission(ctx, name, k[0], k[1]); err != nil {
				return fmt.Errorf("revoke [%s, %s): %w", k[0], k[1], err)
			}
			continue
		}
		have[k] = p.PermType
	}
	for _, g := range want {
		if t, ok := have[[2]string{g.key, g.end}]; ok && clientv3.PermissionType(t) == g.perm {
			continue
		}
		// A grant of a range the role holds with another type replaces that type.
		if _, err := s.c.RoleGrantPermission(ctx, name, g.key, g.end, g.perm); err != nil {
			return fmt.Errorf("grant %s: %w", g.key, err)
		}
	}
	return nil
}

// ensureUser makes user exist with role as its only role; see EnsureRegionRole for
// the password.
func (s *Store) ensureUser(ctx context.Context, user, password, role string) error {
	u, err := s.c.UserGet(ctx, user)
	switch {
	case errors.Is(err, rpctypes.ErrUserNotFound):
		opts := &clientv3.UserAddOptions{NoPassword: password == ""}
		if _, err := s.c.UserAddWithOptions(ctx, user, password, opts); err != nil {
			return err
		}
	case err != nil:
		return err
	case password != "":
		if _, err := s.c.UserChangePassword(ctx, user, password); err != nil {
			return err
		}
	}
	var roles []string
	if u != nil {
		roles = u.Roles
	}
	for _, r := range roles {
		if r != role {
			if _, err := s.c.UserRevokeRole(ctx, user, r); err != nil {
				return fmt.Errorf("revoke role %s: %w", r, err)
			}
		}
	}
	if !slices.Contains(roles, role) {
		if _, err := s.c.UserGrantRole(ctx, user, role); err != nil {
			return fmt.Errorf("grant role %s: %w", role, err)
		}
	}
	return nil
}

// EnableAuth turns etcd's authentication on. etcd requires its root user first: an
// existing root is kept as it is; a missing one is created with rootPassword ("" for a
// root that authenticates by client certificate only, CN root). From then on every
// client needs a user: run EnsureControlRole and EnsureRegionRole before, or lock the
// running control plane and appliances out. Idempotent.
func (s *Store) EnableAuth(ctx context.Context, rootPassword string) error {
	if err := s.ensureRootUser(ctx, rootPassword); err != nil {
		return fmt.Errorf("etcd user root: %w", err)
	}
	if _, err := s.c.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enable etcd auth: %w", err)
	}
	return nil
}

func (s *Store) ensureRootUser(ctx context.Context, password string) error {
	u, err := s.c.UserGet(ctx, rootUser)
	switch {
	case errors.Is(err, rpctypes.ErrUserNotFound):
		if _, err := s.c.UserAddWithOptions(ctx, rootUser, password, &clientv3.UserAddOptions{NoPassword: password == ""}); err != nil {
			return err
		}
	case err != nil:
		return err
	case slices.Contains(u.Roles, rootUser):
		return nil
	}
	_, err = s.c.UserGrantRole(ctx, rootUser, rootUser)
	return err
}

// AuthEnabled reports whether etcd's authentication is on.
func (s *Store) AuthEnabled(ctx context.Context) (bool, error) {
	resp, err := s.c.AuthStatus(ctx)
	if err != nil {
		return false, fmt.Errorf("etcd auth status: %w", err)
	}
	return resp.Enabled, nil
}

// RolePermission is one permission of an etcd role as etcd holds it.
type RolePermission struct {
	Key, RangeEnd string // RangeEnd "": the key alone
	Write         bool   // false: read only
}

// String is the permission as etcdctl role get shows it.
func (p RolePermission) String() string {
	kind := "read"
	if p.Write {
		kind = "readwrite"
	}
	if p.RangeEnd == "" {
		return kind + " " + p.Key
	}
	if p.RangeEnd == clientv3.GetPrefixRangeEnd(p.Key) {
		return kind + " " + p.Key + " (prefix)"
	}
	return kind + " [" + p.Key + ", " + p.RangeEnd + ")"
}

// RolePermissions reads role's permissions from etcd (what `regions add` prints).
func (s *Store) RolePermissions(ctx context.Context, role string) ([]RolePermission, error) {
	resp, err := s.c.RoleGet(ctx, role)
	if err != nil {
		return nil, fmt.Errorf("etcd role %s: %w", role, err)
	}
	out := make([]RolePermission, 0, len(resp.Perm))
	for _, p := range resp.Perm {
		out = append(out, RolePermission{Key: string(p.Key), RangeEnd: string(p.RangeEnd), Write: p.PermType == authpb.READWRITE})
	}
	slices.SortFunc(out, func(a, b RolePermission) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}
