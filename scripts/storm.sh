#!/usr/bin/env bash
# `make storm N=1000`: a boot storm of N machines against one appliance (embedded etcd)
# and a control plane, started here from bin/ in a temporary directory, on free loopback
# ports. DHCP=1 adds the proxy-DHCP stage (root: the appliance binds :67 and :4011).
#
# The appliance keeps its default per-source limits (--report-burst-per-source,
# --max-conns-per-source): each simulated machine has its own source address
# (127.1.x.y), as on a real boot network, so those limits never see more than one
# machine. Only the total --max-conns grows with N (two connections per machine).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
N=${N:-200}
IMAGE_MB=${IMAGE_MB:-4}
tmp=$(mktemp -d /tmp/lpmos-storm.XXXXXX)
appliance="" control=""
cleanup() {
  for p in $control $appliance; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $control $appliance; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

used=" "
free_port() { # a loopback port no TCP or UDP socket holds, not handed out before
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    [[ $used == *" $p "* ]] && continue
    if [ -z "$(ss -Hltun "sport = :$p")" ]; then used+="$p "; echo "$p"; return; fi
  done
}
api=$(free_port); cp=$(free_port); e1=$(free_port); e2=$(free_port); tftp=$(free_port)

mkdir -p "$tmp/images"
head -c $((IMAGE_MB << 20)) /dev/urandom >"$tmp/storm.img"
bin/lpmos-image add --dir "$tmp/images" --os-type ubuntu --os-version 22.04 "$tmp/storm.img" >/dev/null
head -c $((256 << 10)) /dev/urandom >"$tmp/vmlinuz"        # dummy kernel and initramfs: the
head -c $((1 << 20)) /dev/urandom >"$tmp/initramfs.cpio.gz" # storm measures serving, not booting

dhcp_flags=() storm_flags=()
if [ "${DHCP:-0}" = 1 ]; then
  dhcp_flags=(--dhcp-mode=proxy --boot-server-ip=127.0.0.1)
  storm_flags=(--dhcp)
fi
bin/lpmos-appliance --label=dc1 --api-port="$api" --etcd-data-dir="$tmp/dc1.etcd" \
  --etcd-listen-client-urls="http://127.0.0.1:$e1" --etcd-listen-peer-urls="http://127.0.0.1:$e2" \
  --images-dir="$tmp/images" --tftp-addr="127.0.0.1:$tftp" --kernel="$tmp/vmlinuz" --initramfs="$tmp/initramfs.cpio.gz" \
  --max-conns=$((2 * N + 1024)) --log-level=warn "${dhcp_flags[@]}" 2>"$tmp/appliance.log" &
appliance=$!
for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$api/api/health" >/dev/null 2>&1 && break
  kill -0 "$appliance" 2>/dev/null || { cat "$tmp/appliance.log" >&2; echo "storm: the appliance exited" >&2; exit 1; }
  sleep 0.2
done
bin/lpmos-control bootstrap --out-dir="$tmp" --etcd-endpoints="127.0.0.1:$e1" >/dev/null
bin/lpmos-control --port="$cp" --etcd-endpoints="127.0.0.1:$e1" 2>"$tmp/control.log" &
control=$!
for _ in $(seq 1 150); do # up, and the region's heartbeat seen
  curl -fsS -H "Authorization: Bearer $(cat "$tmp/admin-token")" "http://127.0.0.1:$cp/api/v1/regions" 2>/dev/null | grep -q '"dc1"' && break
  kill -0 "$control" 2>/dev/null || { cat "$tmp/control.log" >&2; echo "storm: the control plane exited" >&2; exit 1; }
  sleep 0.2
done
echo "storm: N=$N, appliance pid $appliance on 127.0.0.1:$api (TFTP :$tftp${DHCP:+, proxy-DHCP :4011}), control plane :$cp, image ${IMAGE_MB} MiB"
set +e
bin/lpmos-storm -n "$N" --appliance-url="http://127.0.0.1:$api" --control-url="http://127.0.0.1:$cp" \
  --token-file="$tmp/admin-token" --tftp="127.0.0.1:$tftp" --appliance-pid="$appliance" "${storm_flags[@]}" ${STORM_FLAGS:-}
rc=$?
set -e
[ $rc = 0 ] || tail -n 20 "$tmp/appliance.log" >&2
exit $rc
