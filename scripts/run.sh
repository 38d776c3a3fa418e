#!/usr/bin/env bash
# `make run`: the whole system on one host, unprivileged. The appliance dc1 runs its
# embedded etcd (127.0.0.1:2379) and the control plane uses it. Ctrl-C stops both.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
RUN_DIR=${RUN_DIR:-run}
mkdir -p "$RUN_DIR/images"
API_PORT=${API_PORT:-8081}
PORT=${PORT:-8080}

# TFTP off: `make run` is the API-only setup, unprivileged; the netboot setup is
# `make demo` or the appliance with --dhcp-interface (see README).
bin/lpmos-appliance --label=dc1 --api-port="$API_PORT" --etcd-data-dir="$RUN_DIR/dc1.etcd" --images-dir="$RUN_DIR/images" --tftp-addr= &
appliance=$!
cleanup() {
  kill -TERM "$control" "$appliance" 2>/dev/null || true
  wait "$control" "$appliance" 2>/dev/null || true
}
control=""
trap cleanup EXIT INT TERM

# The control plane needs the appliance's etcd: wait for the regional API to answer.
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$API_PORT/api/health" >/dev/null 2>&1; then break; fi
  kill -0 "$appliance" 2>/dev/null || { echo "run: the appliance exited" >&2; exit 1; }
  sleep 0.2
done
# First start (no user in etcd): create "admin" with a random password and an API
# token, print both once and keep them in $RUN_DIR/admin-password and admin-token
# (0600). Later starts: nothing to do.
bin/lpmos-control bootstrap --out-dir="$RUN_DIR" --etcd-endpoints=127.0.0.1:2379
bin/lpmos-control --port="$PORT" --etcd-endpoints=127.0.0.1:2379 &
control=$!

cat <<MSG

  LPMOS is running.
    Control plane (web UI + REST API): http://localhost:$PORT/
      log in as admin, password in $RUN_DIR/admin-password
      API: curl -H "Authorization: Bearer \$(cat $RUN_DIR/admin-token)" http://localhost:$PORT/api/v1/tasks
    Add a task:                        http://localhost:$PORT/tasks/create
    Regional API dc1 (agents):         http://localhost:$API_PORT/api/health
    etcd (embedded in the appliance):  127.0.0.1:2379   (etcdctl get --prefix /os/)
    OS images:                         bin/lpmos-image add --dir $RUN_DIR/images --os-type ubuntu --os-version 22.04 FILE
  Ctrl-C stops both.

MSG
wait -n "$appliance" "$control"
