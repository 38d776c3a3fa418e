#!/usr/bin/env bash
# CPU profile of our DHCP server under load (issue 12 item 6): netboot-lab in
# full or proxy mode (pprof, --cpu-profile), or the appliance binary in full
# mode with its embedded etcd in a directory on disk (mode "appliance"; set
# PERF=1 for a perf profile, it has no pprof flag), in a network namespace, driven like bench-sidebyside.sh
# (perfdhcp as a relay for full, scripts/proxyload for proxy) at RATE/s for
# SECONDS, with --cpu-profile; prints CPU us per answered DORA/offer from
# /proc/PID/stat and pprof's top, and keeps the profile as OUT (default
# /tmp/dhcp-MODE.pprof). Namespaces 10.81.0.1/16 (server) and 10.81.0.2/16
# (client); nothing else is touched. Needs root, perfdhcp, go. APP_ERR=FILE keeps
# the appliance's stderr (default: dropped with the work directory).
# Usage: scripts/profile-dhcp.sh full|proxy [RATE] [SECONDS] [OUT]
set -euo pipefail
mode=${1:?full, proxy or appliance}
rate=${2:-1000}
secs=${3:-10}
out=${4:-/tmp/dhcp-$mode.pprof}
top=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/usr/local/go/bin:$PATH:/usr/sbin
[ "$(id -u)" = 0 ] || { echo "profile-dhcp: needs root (network namespaces)" >&2; exit 1; }
cd "$top" # go build of this module
rm -f "$out"
tag=$$ srv=lpm-prof-$$-s cli=lpm-prof-$$-c
work=$(mktemp -d /tmp/profile-dhcp.XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  ip netns del $srv 2>/dev/null || true; ip netns del $cli 2>/dev/null || true; rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/netboot-lab" "$top/netboot/internal/cmd/netboot-lab"
go build -o "$work/proxyload" "$top/scripts/proxyload"
go build -o "$work/lpmos-appliance" "$top/appliance/cmd/lpmos-appliance"
ip netns add $srv; ip netns add $cli
ip -n $srv link set lo up; ip -n $cli link set lo up
ip -n $srv link add pf0 type veth peer name pf1 netns $cli
ip -n $srv addr add 10.81.0.1/16 dev pf0; ip -n $cli addr add 10.81.0.2/16 dev pf1
ip -n $srv link set pf0 up; ip -n $cli link set pf1 up
if [ "$mode" = appliance ]; then
  mkdir -p "$work/images"
  ip netns exec $srv "$work/lpmos-appliance" --label=prof --dhcp-mode=full --dhcp-interface=pf0 --dhcp-range=10.81.1.0,10.81.250.255 \
    --etcd-data-dir="$work/etcd" --tftp-addr= --api-host=127.0.0.1 --images-dir="$work/images" --log-level=warn 2>"${APP_ERR:-$work/appliance.err}" &
else
  args=(--dhcp-mode "$mode" --dhcp-interface pf0 --log-level error)
  # Older trees (to compare against) have no --cpu-profile.
  "$work/netboot-lab" --help 2>&1 | grep -q cpu-profile && args+=(--cpu-profile "$out")
  [ "$mode" = full ] && args+=(--dhcp-range 10.81.1.0,10.81.250.255 --dhcp-subnet 10.81.0.0/16)
  ip netns exec $srv "$work/netboot-lab" "${args[@]}" &
fi
pid=$!
for i in $(seq 1 600); do ip netns exec $srv ss -Hlun 'sport = :67' | grep -q . && break; sleep 0.1; done
echo "profile-dhcp: etcd data on $(stat -f -c %T "$work")"
c0=$(awk '{print $14+$15}' /proc/$pid/stat); u0=$(awk '{print $14" "$15}' /proc/$pid/stat)
[ -n "${PERF:-}" ] && { perf record -q -g -o "$out.perf" -p $pid -- sleep $((secs+2)) 2>/dev/null & perfpid=$!; }
if [ "$mode" != proxy ]; then
  o=$(ip netns exec $cli perfdhcp -4 -l pf1 -r "$rate" -R 5000 -p "$secs" -d 2 -W 2000000 10.81.0.1 2>&1 || true)
  n=$(echo "$o" | awk '/^received packets:/{v=$3} END{print v+0}')
else
  o=$(ip netns exec $cli "$work/proxyload" -server 10.81.0.1 -relay 10.81.0.2 -rate "$rate" -seconds "$secs" -clients 5000)
  n=$(echo "$o" | awk '{print $4}')
fi
c1=$(awk '{print $14+$15}' /proc/$pid/stat); echo "profile-dhcp: utime stime ticks before $u0 after $(awk '{print $14" "$15}' /proc/$pid/stat)"
[ -n "${PERF:-}" ] && wait $perfpid
# Where datagrams were lost: each side's UDP receive-buffer overflows.
for ns in $srv $cli; do
  echo "profile-dhcp: $ns UDP $(ip netns exec $ns awk '/^Udp:/{if(!seen){seen=1; split($0,h); next} for(i=2;i<=NF;i++) if(h[i]~/RcvbufErrors|InErrors|SndbufErrors/) printf "%s=%s ", h[i], $i}' /proc/net/snmp)"
done
kill -TERM "$pid"; wait "$pid" || true; pid=
awk -v a="$c0" -v b="$c1" -v n="$n" -v t="$(getconf CLK_TCK)" 'BEGIN{printf "profile-dhcp: %s answered %d, CPU %.2f s, %.1f us each\n", "'"$mode"'", n, (b-a)/t, (b-a)*1e6/t/n}'
echo "$o" | grep -E "^(\*\*\*|drops|received packets|sent packets|rejected|min delay|avg delay|max delay)" || true
if [ "$mode" != appliance ] && [ -s "$out" ]; then
  go tool pprof -top -nodecount=45 "$work/netboot-lab" "$out" 2>/dev/null | head -60
  cp "$work/netboot-lab" "$out.bin"
  echo "profile-dhcp: profile $out, binary $out.bin (go tool pprof $out.bin $out)"
fi
