#!/usr/bin/env bash
# Side-by-side benchmark, one run (issue 12 item 7): our boot servers
# (netboot-lab, the same netboot/dhcpd, tftpd and ipxe HTTP handler the
# appliance uses) against the usual peers, on the same machine, the same
# client and the same veth pair between two network namespaces this script
# creates (server side 10.80.0.1/16, client side 10.80.0.2/16). No other
# address is used. Servers and namespaces are cleaned up by PID/name on exit.
#  1 full DHCP: ours (in-memory lease store, dhcpd.MemLeases) vs kea-dhcp4
#    (memfile, persist false) vs dnsmasq (--leasefile-ro: memory only); perfdhcp as a relay, $DHCP_CLIENTS
#    clients; highest drop-free DORA/s over $DHCP_RATES (a step that fails is
#    run once more before the climb stops: one hiccup of a shared machine
#    should not end it); then CPU us per DORA
#    at a fixed $CPU_RATE (utime+stime of the server PID, /proc/PID/stat).
#    Then the real appliance (lpmos-appliance --dhcp-mode=full) the same way:
#    its leases group-committed to its embedded etcd, whose data lives in a
#    fresh directory under $ETCD_DIR (default /var/tmp; must not be tmpfs) per
#    start, so every DORA is durable before the ACK; its CPU counts etcd's.
#  2 proxy DHCP: ours vs dnsmasq (dhcp-range proxy + pxe-service), driven by
#    scripts/proxyload (PXE DISCOVERs as a relay); highest drop-free offers/s
#    and CPU us per offer at $CPU_RATE.
#  3 TFTP: ours vs tftpd-hpa vs atftpd, curl tftp://, undionly.kpxe and 1 MiB,
#    blksize 512 and 1468, single (median of $TFTP_N) and 50 concurrent.
#  4 HTTP: $HTTP_CLIENTS clients each fetch kernel ($KERNEL_MB MB) then
#    initramfs ($INITRD_MB MB): ours vs nginx; MB/s and p50/p99 per boot.
# Servers start as "ip netns exec NS server &" so $! is the server's PID.
# Ratios are ours/peer, oriented so that > 1 means ours is better.
# Needs root, perfdhcp (kea-admin), kea-dhcp4, dnsmasq, in.tftpd, atftpd
# (or ATFTPD=path), nginx, curl. ONLY_DHCP=1 stops after the DHCP parts;
# DHCP_SERVERS picks the full-DHCP servers run, NO_PROXY=1 skips proxy DHCP.
# Each full-DHCP climb that stopped is explained in one line: the step, the
# OFFER and ACK drops and perfdhcp's own socket overflows there.
# Usage: scripts/bench-sidebyside.sh
set -euo pipefail
DHCP_RATES=${DHCP_RATES:-"500 1000 2000 3000 4000 6000 8000 12000 16000"}
DHCP_CLIENTS=${DHCP_CLIENTS:-5000}
PERIOD=${PERIOD:-3}
CPU_RATE=${CPU_RATE:-1000}
PROXY_RATES=${PROXY_RATES:-"1000 2000 4000 8000 12000 16000 24000 32000"}
TFTP_N=${TFTP_N:-5}
HTTP_CLIENTS=${HTTP_CLIENTS:-500}
KERNEL_MB=${KERNEL_MB:-8}
INITRD_MB=${INITRD_MB:-12}
# dnsmasq's leases: in memory like ours and Kea's (default), or
# DNSMASQ_LEASES=--dhcp-leasefile=FILE to have it rewrite a lease file per change.
DNSMASQ_LEASES=${DNSMASQ_LEASES:---leasefile-ro}
ETCD_DIR=${ETCD_DIR:-/var/tmp}
ONLY_DHCP=${ONLY_DHCP:-}
# Which full-DHCP servers to run (a subset for quick comparisons; "-" in the table for the rest).
DHCP_SERVERS=${DHCP_SERVERS:-"ours kea dnsmasq appliance"}
# NO_PROXY=1 skips the proxy-DHCP part.
NO_PROXY=${NO_PROXY:-}
ATFTPD=${ATFTPD:-$(command -v atftpd || true)}
top=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/usr/local/go/bin:$PATH:/usr/sbin
[ "$(id -u)" = 0 ] || { echo "bench-sidebyside: needs root (network namespaces)" >&2; exit 1; }
need="perfdhcp kea-dhcp4 dnsmasq ip go"; [ -z "$ONLY_DHCP" ] && need="$need in.tftpd nginx curl"
for b in $need; do command -v $b >/dev/null || { echo "bench-sidebyside: $b missing" >&2; exit 1; }; done
[ -n "$ONLY_DHCP" ] || [ -x "$ATFTPD" ] || { echo "bench-sidebyside: atftpd missing (set ATFTPD)" >&2; exit 1; }

tag=$$
srv=lpm-sbs-$tag-s cli=lpm-sbs-$tag-c
work=$(mktemp -d /tmp/bench-sbs.XXXXXX)
pid=
pids=()
etcddir=
stop_server() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi
  if [ -n "$etcddir" ]; then rm -rf "$etcddir"; etcddir=; fi
}
cleanup() {
  stop_server
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del $srv 2>/dev/null || true; ip netns del $cli 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
S() { ip netns exec $srv "$@"; }
C() { ip netns exec $cli "$@"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2}'; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }   # clock ticks
tck=$(getconf CLK_TCK)
cd "$top" # go build of this module

go build -o "$work/netboot-lab" "$top/netboot/internal/cmd/netboot-lab"
go build -o "$work/lpmos-appliance" "$top/appliance/cmd/lpmos-appliance"
mkdir -p "$work/images"
etcdfs=$(stat -f -c %T "$ETCD_DIR")
[ "$etcdfs" = tmpfs ] && { echo "bench-sidebyside: ETCD_DIR=$ETCD_DIR is tmpfs; the appliance's etcd must write to disk" >&2; exit 1; }
go build -o "$work/proxyload" "$top/scripts/proxyload"
go build -o "$work/httpload" "$top/scripts/httpload"
ip netns add $srv; ip netns add $cli
ip -n $srv link set lo up; ip -n $cli link set lo up
ip -n $srv link add sb0 type veth peer name sb1 netns $cli
ip -n $srv addr add 10.80.0.1/16 dev sb0; ip -n $cli addr add 10.80.0.2/16 dev sb1
ip -n $srv link set sb0 up; ip -n $cli link set sb1 up

echo "bench-sidebyside $(date -u +%FT%TZ) host $(nproc) CPUs, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- 1 + 2: DHCP ----
cat > "$work/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "sb0" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": false, "lfc-interval": 0 },
  "valid-lifetime": 3600, "authoritative": true,
  "subnet4": [ { "id": 1, "subnet": "10.80.0.0/16", "pools": [ { "pool": "10.80.1.0 - 10.80.250.255" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "severity": "ERROR", "output_options": [ { "output": "stderr" } ] } ]
} }
JSON
start_server() { # NAME
  case $1 in
    dnsmasq) ip netns exec $srv dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface=sb0 --bind-interfaces \
        --dhcp-range=10.80.1.0,10.80.250.255,255.255.0.0,1h --dhcp-lease-max=100000 --no-ping --dhcp-authoritative \
        $DNSMASQ_LEASES --quiet-dhcp --log-facility=/dev/null & ;;
    dnsmasq-proxy) ip netns exec $srv dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface=sb0 --bind-interfaces \
        --dhcp-range=10.80.0.0,proxy,255.255.0.0 --pxe-service=x86PC,"netboot",undionly --dhcp-boot=undionly.kpxe \
        --dhcp-leasefile="$work/leases.$RANDOM" --quiet-dhcp --log-facility=/dev/null & ;;
    kea) ip netns exec $srv env KEA_LOCKFILE_DIR="$work" KEA_PIDFILE_DIR="$work" kea-dhcp4 -c "$work/kea.json" >"$work/kea.err" 2>&1 & ;;
    ours) ip netns exec $srv "$work/netboot-lab" --dhcp-mode full --dhcp-interface sb0 \
        --dhcp-range 10.80.1.0,10.80.250.255 --dhcp-subnet 10.80.0.0/16 --log-level error & ;;
    ours-proxy) ip netns exec $srv "$work/netboot-lab" --dhcp-mode proxy --dhcp-interface sb0 --log-level error & ;;
    appliance) etcddir=$(mktemp -d "$ETCD_DIR/bench-sbs-etcd.XXXXXX")
      ip netns exec $srv "$work/lpmos-appliance" --label=bench --dhcp-mode=full --dhcp-interface=sb0 --dhcp-range=10.80.1.0,10.80.250.255 \
        --etcd-data-dir="$etcddir/etcd" --tftp-addr= --api-host=127.0.0.1 --images-dir="$work/images" --log-level=warn 2>>"$work/appliance.err" & ;;
  esac
  pid=$!
  for i in $(seq 1 600); do
    if S ss -Hlun 'sport = :67' | grep -q .; then sleep 0.3; return; fi
    sleep 0.1
  done
  echo "bench-sidebyside: $1 not listening on :67" >&2; cat "$work/kea.err" "$work/appliance.err" >&2 2>/dev/null; exit 1
}
# UDP receive-buffer overflows in the client namespace (/proc/net/snmp): a drop
# perfdhcp counts may be its own socket overflowing, not the server's silence.
cli_overflows() { C awk '/^Udp:/{if(!seen){seen=1; split($0,h); next} for(i=2;i<=NF;i++) if(h[i]=="RcvbufErrors") print $i}' /proc/net/snmp; }
# perf RATE: runs perfdhcp; sets OK (1 if no drop/reject/duplicate), DORAS (ACKs
# received) and CLIOVF (client-side overflows during the run)
perf() {
  local o0; o0=$(cli_overflows)
  local out; out=$(C timeout $((PERIOD + 20)) perfdhcp -4 -l sb1 -r "$1" -R "$DHCP_CLIENTS" -p "$PERIOD" -d 2 -W 2000000 -s $RANDOM 10.80.0.1 2>&1) || true
  echo "$out" > "$work/perf.last"
  CLIOVF=$(( $(cli_overflows) - o0 ))
  local drops rej nonuniq
  drops=$(echo "$out" | awk '/^drops:/{s+=$2} END{print s+0}')
  rej=$(echo "$out" | awk '/^rejected leases:/{s+=$3} END{print s+0}')
  nonuniq=$(echo "$out" | awk '/^non unique addresses:/{s+=$4} END{print s+0}')
  DORAS=$(echo "$out" | awk '/^received packets:/{n++; v=$3} END{print (n==2)?v:0}')
  # Drop-free only if perfdhcp really sent ~RATE*PERIOD (it is the client limit otherwise).
  local full; full=$(awk -v d="$DORAS" -v r="$1" -v p="$PERIOD" 'BEGIN{print (d >= 0.95*r*p) ? 1 : 0}')
  OK=0; [ "$drops" = 0 ] && [ "$rej" = 0 ] && [ "$nonuniq" = 0 ] && [ "$full" = 1 ] && OK=1 || true
}
dhcp_full() { # NAME -> BEST, CPUUS, FAILOVF (client overflows at the step that failed)
  local r c0 c1; BEST=0 FAILOVF=-
  case " $DHCP_SERVERS " in *" $1 "*) ;; *) BEST=- CPUUS=-; return ;; esac
  start_server "$1"
  for r in $DHCP_RATES; do perf "$r"; [ $OK = 1 ] || perf "$r"; [ $OK = 1 ] && BEST=$r || { FAILOVF=$CLIOVF; break; }; done
  [ $OK = 1 ] || printf '  (%s stopped at %s/s: drops DISCOVER-OFFER %s, REQUEST-ACK %s; perfdhcp socket overflows %s)\n' "$1" "$r" \
    "$(awk '/^drops:/{print $2; exit}' "$work/perf.last")" "$(awk '/^drops:/{n++} n==2{print $2; exit}' "$work/perf.last")" "$CLIOVF" >>"$work/notes"
  stop_server
  start_server "$1"; c0=$(cpu $pid); perf "$CPU_RATE"; c1=$(cpu $pid); stop_server
  CPUUS=$(awk -v a="$c0" -v b="$c1" -v n="$DORAS" -v t="$tck" 'BEGIN{ if (n>0) printf "%.1f", (b-a)*1e6/t/n; else print "n/a" }')
}
proxy() { # RATE: sets OK, OFFERS
  local out; out=$(C "$work/proxyload" -server 10.80.0.1 -relay 10.80.0.2 -rate "$1" -seconds "$PERIOD" -clients "$DHCP_CLIENTS")
  OFFERS=$(echo "$out" | awk '{print $4}'); OK=0; [ "$(echo "$out" | awk -v r="$1" -v p="$PERIOD" '{print ($2==$4 && $4>=0.95*r*p)}')" = 1 ] && OK=1 || true
}
dhcp_proxy() { # NAME -> BEST, CPUUS
  local r c0 c1; BEST=0
  start_server "$1"
  for r in $PROXY_RATES; do proxy "$r"; [ $OK = 1 ] || proxy "$r"; [ $OK = 1 ] && BEST=$r || break; done
  stop_server
  start_server "$1"; c0=$(cpu $pid); proxy "$CPU_RATE"; c1=$(cpu $pid); stop_server
  CPUUS=$(awk -v a="$c0" -v b="$c1" -v n="$OFFERS" -v t="$tck" 'BEGIN{ if (n>0) printf "%.1f", (b-a)*1e6/t/n; else print "n/a" }')
}

printf '\n%-44s %12s %12s %12s   %s\n' "measure" ours peer1 peer2 "ratio ours/peer (>1: ours better)"
dhcp_full ours;    ob=$BEST oc=$CPUUS oo=$FAILOVF
dhcp_full kea;     kb=$BEST kc=$CPUUS ko=$FAILOVF
dhcp_full dnsmasq; db=$BEST dc=$CPUUS dno=$FAILOVF
dhcp_full appliance; ab=$BEST ac=$CPUUS ao=$FAILOVF
printf '%-44s %12s %12s %12s   kea %s  dnsmasq %s\n' "full DHCP DORA/s drop-free (kea,dnsm)" "$ob" "$kb" "$db" "$(ratio $ob $kb)" "$(ratio $ob $db)"
printf '%-44s %12s %12s %12s   kea %s  dnsmasq %s  (lower is better; ratio = peer/ours)\n' "full DHCP CPU us/DORA @${CPU_RATE}/s" "$oc" "$kc" "$dc" "$(ratio $kc $oc)" "$(ratio $dc $oc)"
printf '%-44s %12s %12s %12s   kea %s  dnsmasq %s\n' "appliance+etcd($etcdfs) DORA/s drop-free" "$ab" "$kb" "$db" "$(ratio $ab $kb)" "$(ratio $ab $db)"
printf '%-44s %12s %12s %12s   kea %s  dnsmasq %s  (lower is better; ratio = peer/ours)\n' "appliance+etcd CPU us/DORA @${CPU_RATE}/s" "$ac" "$kc" "$dc" "$(ratio $kc $ac)" "$(ratio $dc $ac)"
echo "  (perfdhcp's own socket overflowing at the first failing step: ours $oo, kea $ko, dnsmasq $dno, appliance $ao datagrams)"
[ -s "$work/notes" ] && cat "$work/notes"
[ -n "$NO_PROXY" ] && { echo "  (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"; exit 0; }
dhcp_proxy ours-proxy;    ob=$BEST oc=$CPUUS
dhcp_proxy dnsmasq-proxy; db=$BEST dc=$CPUUS
printf '%-44s %12s %12s %12s   dnsmasq %s\n' "proxy DHCP offers/s drop-free (dnsm)" "$ob" "$db" - "$(ratio $ob $db)"
printf '%-44s %12s %12s %12s   dnsmasq %s  (lower is better; ratio = peer/ours)\n' "proxy CPU us/offer @${CPU_RATE}/s" "$oc" "$dc" - "$(ratio $dc $oc)"
echo "  (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
[ -n "$ONLY_DHCP" ] && exit 0

# ---- 3: TFTP ----
mkdir -p "$work/files"
cp "$top/netboot/ipxe/bin/undionly.kpxe" "$work/files/"
head -c 1048576 /dev/urandom > "$work/files/blob1m.efi"
chmod -R a+rX "$work"
ip netns exec $srv in.tftpd --foreground --listen --address 10.80.0.1:69 --secure "$work/files" & pids+=($!)
ip netns exec $srv "$work/netboot-lab" --tftp-addr 10.80.0.1:6969 --tftp-max-per-source 1000 --ipxe-dir "$work/files" --log-level warn & pids+=($!)
ip netns exec $srv "$ATFTPD" --daemon --no-fork --port 6970 --bind-address 10.80.0.1 --maxthread 500 --logfile /dev/null "$work/files" & pids+=($!)
for port in 69 6969 6970; do
  for i in $(seq 1 50); do
    C curl -s -o /dev/null --max-time 2 tftp://10.80.0.1:$port/undionly.kpxe && break
    [ "$i" = 50 ] && { echo "bench-sidebyside: TFTP on port $port not answering" >&2; exit 1; }
    sleep 0.1
  done
done
one() { # PORT FILE BLK -> seconds
  local out; out=$(mktemp "$work/o.XXXXXX")
  local opt=(); [ "$3" != 512 ] && opt=(--tftp-blksize "$3")
  local t; t=$(C curl -sS --max-time 60 "${opt[@]}" -o "$out" -w '%{time_total}' "tftp://10.80.0.1:$1/$2")
  cmp -s "$out" "$work/files/$2" || { echo "bench-sidebyside: $2 from port $1 differs" >&2; exit 1; }
  rm -f "$out"; echo "$t"
}
batch() { # PORT FILE BLK -> wall seconds for 50 concurrent
  local opt=""; [ "$3" != 512 ] && opt="--tftp-blksize $3"
  local s e; s=$(date +%s.%N)
  C bash -c 'for i in $(seq 1 50); do curl -sS --max-time 120 '"$opt"' -o '"$work"'/b.$i tftp://10.80.0.1:'"$1"'/'"$2"' & done; wait'
  e=$(date +%s.%N)
  for i in $(seq 1 50); do cmp -s "$work/b.$i" "$work/files/$2" || { echo "bench-sidebyside: batch copy $i from port $1 differs" >&2; exit 1; }; done
  rm -f "$work"/b.*
  awk -v e="$e" -v s="$s" 'BEGIN{printf "%.4f\n", e-s}'
}
for blk in 512 1468; do
  for f in undionly.kpxe blob1m.efi; do
    o=() h=() a=()
    for i in $(seq 1 "$TFTP_N"); do o+=("$(one 6969 $f $blk)"); h+=("$(one 69 $f $blk)"); a+=("$(one 6970 $f $blk)"); done
    om=$(printf '%s\n' "${o[@]}" | median); hm=$(printf '%s\n' "${h[@]}" | median); am=$(printf '%s\n' "${a[@]}" | median)
    printf '%-44s %11.4fs %11.4fs %11.4fs   hpa %s  atftpd %s  (time; ratio = peer/ours)\n' "TFTP $f b$blk single (hpa,atftpd)" "$om" "$hm" "$am" "$(ratio $hm $om)" "$(ratio $am $om)"
    om=$(batch 6969 $f $blk); hm=$(batch 69 $f $blk); am=$(batch 6970 $f $blk)
    printf '%-44s %11.4fs %11.4fs %11.4fs   hpa %s  atftpd %s\n' "TFTP $f b$blk 50-conc" "$om" "$hm" "$am" "$(ratio $hm $om)" "$(ratio $am $om)"
  done
done
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
echo "  (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"

# ---- 4: HTTP ----
head -c $((KERNEL_MB << 20)) /dev/urandom > "$work/files/vmlinuz"
head -c $((INITRD_MB << 20)) /dev/urandom > "$work/files/initrd.img"
chmod a+r "$work/files/"*
ip netns exec $srv "$work/netboot-lab" --http-addr 10.80.0.1:8081 --kernel "$work/files/vmlinuz" --initramfs "$work/files/initrd.img" --log-level warn & pids+=($!)
mkdir -p "$work/nginx/boot"; ln -s "$work/files" "$work/nginx/boot/files"
cat > "$work/nginx.conf" <<NGX
worker_processes auto; pid $work/nginx.pid; error_log $work/nginx.err; daemon off;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx; uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 10.80.0.1:8082 backlog=4096; root $work/nginx; disable_symlinks off; } }
NGX
ip netns exec $srv nginx -c "$work/nginx.conf" & pids+=($!)
for port in 8081 8082; do
  for i in $(seq 1 50); do
    C curl -sf -o /dev/null --max-time 2 http://10.80.0.1:$port/boot/files/vmlinuz && break
    [ "$i" = 50 ] && { echo "bench-sidebyside: HTTP on port $port not answering" >&2; cat "$work/nginx.err" >&2; exit 1; }
    sleep 0.1
  done
done
hl() { C "$work/httpload" -base "http://10.80.0.1:$1" -paths /boot/files/vmlinuz,/boot/files/initrd.img -clients "$HTTP_CLIENTS" 2>"$work/hl.err"; }
ho=$(hl 8081); hn=$(hl 8082)
f() { echo "$1" | awk -v k="$2" '{for(i=1;i<NF;i++) if($i==k) print $(i+1)}'; }
printf '%-44s %12s %12s %12s   nginx %s\n' "HTTP ${HTTP_CLIENTS}x(${KERNEL_MB}+${INITRD_MB} MB) MB/s" "$(f "$ho" MBps)" "$(f "$hn" MBps)" - "$(ratio "$(f "$ho" MBps)" "$(f "$hn" MBps)")"
printf '%-44s %11ss %11ss %12s   nginx %s  (ratio = peer/ours)\n' "HTTP per-boot p50" "$(f "$ho" p50)" "$(f "$hn" p50)" - "$(ratio "$(f "$hn" p50)" "$(f "$ho" p50)")"
printf '%-44s %11ss %11ss %12s   nginx %s  (ratio = peer/ours)\n' "HTTP per-boot p99" "$(f "$ho" p99)" "$(f "$hn" p99)" - "$(ratio "$(f "$hn" p99)" "$(f "$ho" p99)")"
printf '%-44s %12s %12s\n' "HTTP clients completed" "$(f "$ho" ok)" "$(f "$hn" ok)"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "peer1/peer2: full DHCP kea/dnsmasq; proxy dnsmasq; TFTP tftpd-hpa/atftpd; HTTP nginx. Our DHCP lease store: in-memory (dhcpd.MemLeases) for 'full DHCP', etcd on $etcdfs for 'appliance+etcd'."
