#!/usr/bin/env bash
# DHCP benchmark: netboot/dhcpd full mode against dnsmasq, side by side in
# one run, with Kea's perfdhcp (package kea-admin) as the client. Server and
# client live in two network namespaces joined by a veth pair; only
# addresses inside them are used. perfdhcp acts as a relay (giaddr), so
# replies are unicast; each server gets the same /16 pool.
# For each server the rate steps up (-r, DORA/s for -p seconds, 20000
# simulated clients); the figure is the highest rate with no drop, no
# rejected lease and no duplicate address. Rounds alternate the servers;
# medians over rounds, and the ratio netboot/dnsmasq (>= 1: at least as good).
# Needs root, perfdhcp, dnsmasq. Usage: scripts/bench-dhcp.sh [ROUNDS] [SECONDS]
set -euo pipefail
ROUNDS=${1:-3}
PERIOD=${2:-3}
RATES=${RATES:-"100 200 300 500 1000 2000 4000 6000 8000 12000 16000"}
top=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/usr/local/go/bin:$PATH:/usr/sbin
[ "$(id -u)" = 0 ] || { echo "bench-dhcp: needs root (network namespaces)" >&2; exit 1; }
for b in perfdhcp dnsmasq ip; do command -v $b >/dev/null || { echo "bench-dhcp: $b missing" >&2; exit 1; }; done

tag=$$
srv=lpm-nb-$tag-dsrv cli=lpm-nb-$tag-dcli
work=$(mktemp -d /tmp/bench-dhcp.XXXXXX)
pid=
stop_server() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi; }
cleanup() { stop_server; ip netns del $srv 2>/dev/null || true; ip netns del $cli 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/netboot-lab" "$top/netboot/internal/cmd/netboot-lab"
ip netns add $srv; ip netns add $cli
ip -n $srv link set lo up; ip -n $cli link set lo up
ip -n $srv link add db0 type veth peer name db1 netns $cli
ip -n $srv addr add 10.80.0.1/16 dev db0; ip -n $cli addr add 10.80.0.2/16 dev db1
ip -n $srv link set db0 up; ip -n $cli link set db1 up

start_server() { # NAME
  rm -f "$work/leases"
  case $1 in
    dnsmasq) ip netns exec $srv dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface=db0 --bind-interfaces \
        --dhcp-range=10.80.1.0,10.80.250.255,255.255.0.0,1h --dhcp-lease-max=100000 --no-ping --dhcp-authoritative \
        --dhcp-leasefile="$work/leases" --quiet-dhcp --log-facility=/dev/null & ;;
    netboot) ip netns exec $srv "$work/netboot-lab" --dhcp-mode full --dhcp-interface db0 \
        --dhcp-range 10.80.1.0,10.80.250.255 --dhcp-subnet 10.80.0.0/16 --log-level error & ;;
  esac
  pid=$!
  # Ready when the server's socket is bound (bounded wait).
  for i in $(seq 1 100); do
    if ip netns exec $srv ss -Hlun 'sport = :67' | grep -q .; then return; fi
    sleep 0.1
  done
  echo "bench-dhcp: $1 not listening on :67" >&2; exit 1
}

# clean RATE: 0 when perfdhcp at RATE saw no drop, rejected lease or duplicate.
clean() {
  local out; out=$(ip netns exec $cli timeout $((PERIOD + 20)) perfdhcp -4 -l db1 -r "$1" -R 20000 -p "$PERIOD" -d 2 -W 2000000 -s $RANDOM 10.80.0.1 2>&1) || true
  echo "$out" > "$work/last.txt"
  local drops rej nonuniq recv
  drops=$(echo "$out" | awk '/^drops:/{s+=$2} END{print s+0}')
  rej=$(echo "$out" | awk '/^rejected leases:/{s+=$3} END{print s+0}')
  nonuniq=$(echo "$out" | awk '/^non unique addresses:/{s+=$4} END{print s+0}')
  recv=$(echo "$out" | awk '/^received packets:/{n++; v=$3} END{print (n==2)?v:0}')
  [ "$drops" = 0 ] && [ "$rej" = 0 ] && [ "$nonuniq" = 0 ] && [ "$recv" -gt 0 ]
}

best() { # NAME: sets BEST to the highest clean rate (0 if none)
  start_server "$1"
  local r; BEST=0
  for r in $RATES; do
    if clean "$r"; then BEST=$r; else break; fi
  done
  stop_server
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
d=() n=()
for round in $(seq 1 "$ROUNDS"); do
  best dnsmasq; d+=("$BEST")
  best netboot; n+=("$BEST")
  echo "round $round: dnsmasq ${d[-1]} DORA/s, netboot ${n[-1]} DORA/s (highest drop-free rate of: $RATES)"
done
dm=$(printf '%s\n' "${d[@]}" | median); nm=$(printf '%s\n' "${n[@]}" | median)
printf 'median highest drop-free rate: dnsmasq %s DORA/s, netboot %s DORA/s, ratio netboot/dnsmasq %.2f\n' "$dm" "$nm" \
  "$(awk -v a="$nm" -v b="$dm" 'BEGIN{print (b>0)?a/b:0}')"
