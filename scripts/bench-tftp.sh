#!/usr/bin/env bash
# TFTP benchmark: netboot/tftpd against tftpd-hpa (in.tftpd run by hand, not
# the system service), side by side in one run, same client (curl tftp://).
# Both servers run in one network namespace, the client in another, over a
# veth pair; only addresses inside these namespaces are used.
# Measures fetch time of undionly.kpxe and a 1 MiB file, single (median of
# N runs) and 50 concurrent (median of M runs of the whole batch), at
# curl's default block size (512) and at blksize 1468.
# Needs root, curl, tftpd-hpa (in.tftpd). Usage: scripts/bench-tftp.sh [N] [M]
set -euo pipefail
N=${1:-15}
M=${2:-3}
top=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/usr/local/go/bin:$PATH
[ "$(id -u)" = 0 ] || { echo "bench-tftp: needs root (network namespaces)" >&2; exit 1; }
for b in curl in.tftpd ip; do command -v $b >/dev/null || { echo "bench-tftp: $b missing" >&2; exit 1; }; done

tag=$$
srv=lpm-nb-$tag-tsrv cli=lpm-nb-$tag-tcli
work=$(mktemp -d /tmp/bench-tftp.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del $srv 2>/dev/null || true
  ip netns del $cli 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/netboot-lab" "$top/netboot/internal/cmd/netboot-lab"
mkdir -p "$work/files"
cp "$top/netboot/ipxe/bin/undionly.kpxe" "$work/files/"
head -c 1048576 /dev/urandom > "$work/files/blob1m.efi"   # .efi: the served set is boot images only

ip netns add $srv; ip netns add $cli
ip -n $srv link set lo up; ip -n $cli link set lo up
ip -n $srv link add tb0 type veth peer name tb1 netns $cli
ip -n $srv addr add 10.81.0.1/24 dev tb0; ip -n $cli addr add 10.81.0.2/24 dev tb1
ip -n $srv link set tb0 up; ip -n $cli link set tb1 up

ip netns exec $srv in.tftpd --foreground --listen --address 10.81.0.1:69 --secure "$work/files" &
pids+=($!)
ip netns exec $srv "$work/netboot-lab" --tftp-addr 10.81.0.1:6969 --tftp-max-per-source 1000 --ipxe-dir "$work/files" --log-level warn &
pids+=($!)

# Wait until both answer (bounded).
for port in 69 6969; do
  for i in $(seq 1 50); do
    if ip netns exec $cli curl -s -o /dev/null --max-time 2 tftp://10.81.0.1:$port/undionly.kpxe; then break; fi
    [ "$i" = 50 ] && { echo "bench-tftp: server on port $port not answering" >&2; exit 1; }
  done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# one PORT FILE BLK: seconds for one fetch, checked byte-identical.
one() {
  local out; out=$(mktemp "$work/o.XXXXXX")
  local opt=(); [ "$3" != 512 ] && opt=(--tftp-blksize "$3")
  local t; t=$(ip netns exec $cli curl -sS --max-time 60 "${opt[@]}" -o "$out" -w '%{time_total}' "tftp://10.81.0.1:$1/$2")
  cmp -s "$out" "$work/files/$2" || { echo "bench-tftp: $2 from port $1 differs" >&2; exit 1; }
  rm -f "$out"; echo "$t"
}
# batch PORT FILE BLK: wall seconds for 50 concurrent fetches.
batch() {
  local opt=(); [ "$3" != 512 ] && opt=(--tftp-blksize "$3")
  local s e; s=$(date +%s.%N)
  ip netns exec $cli bash -c '
    for i in $(seq 1 50); do curl -sS --max-time 120 '"${opt[*]}"' -o '"$work"'/b.$i tftp://10.81.0.1:'"$1"'/'"$2"' & done; wait'
  e=$(date +%s.%N)
  for i in $(seq 1 50); do cmp -s "$work/b.$i" "$work/files/$2" || { echo "bench-tftp: batch copy $i differs" >&2; exit 1; }; done
  rm -f "$work"/b.*
  awk -v e="$e" -v s="$s" 'BEGIN{printf "%.6f\n", e-s}'
}

printf '%-14s %-5s %-9s %12s %12s %8s\n' file blk kind tftpd-hpa netboot ratio
for blk in 512 1468; do
  for f in undionly.kpxe blob1m.efi; do
    hpa=() ours=()
    for i in $(seq 1 "$N"); do hpa+=("$(one 69 $f $blk)"); ours+=("$(one 6969 $f $blk)"); done
    h=$(printf '%s\n' "${hpa[@]}" | median); o=$(printf '%s\n' "${ours[@]}" | median)
    printf '%-14s %-5s %-9s %11.4fs %11.4fs %8.2f\n' $f $blk single "$h" "$o" "$(awk -v h="$h" -v o="$o" 'BEGIN{print h/o}')"
    hpa=() ours=()
    for i in $(seq 1 "$M"); do hpa+=("$(batch 69 $f $blk)"); ours+=("$(batch 6969 $f $blk)"); done
    h=$(printf '%s\n' "${hpa[@]}" | median); o=$(printf '%s\n' "${ours[@]}" | median)
    printf '%-14s %-5s %-9s %11.4fs %11.4fs %8.2f\n' $f $blk 50-conc "$h" "$o" "$(awk -v h="$h" -v o="$o" 'BEGIN{print h/o}')"
  done
done
echo "ratio = tftpd-hpa time / netboot time (>= 1: netboot at least as fast); medians of $N single, $M batch runs"
