#!/usr/bin/env bash
# Benchmark of the images/ streaming writer against the shell pipeline
# (curl | zstd -d | dd oflag=direct) and against dd alone (the disk's limit).
#
# A 1 GiB image (real OS files from /usr, zeros, random data) is served as raw
# and as .zst by nginx on loopback and written to a file on the local disk.
# Rounds are interleaved so load from other processes hits every method alike;
# medians and ratios are printed at the end. Bar: >= 1.5x the pipeline and
# >= 0.85x dd alone, for raw and zst.
#
# Env: BENCH_DIR (default /work/bench-images; must be on the disk under test),
#      ROUNDS (default 5), SIZE_MIB (default 1024), KEEP=1 to keep the files.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

dir=${BENCH_DIR:-/work/bench-images}
rounds=${ROUNDS:-5}
mib=${SIZE_MIB:-1024}

for tool in curl zstd dd nginx awk; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found (apt-get install curl zstd nginx-light)" >&2; exit 1; }
done

mkdir -p "$dir"
need=$(( mib * 3 + 512 ))   # raw + zst + target, with room to spare
avail=$(df -Pm "$dir" | awk 'NR==2 {print $4}')
echo "bench: $dir has ${avail} MiB free, needs ~${need} MiB"
df -h "$dir" | tail -1
(( avail > need )) || { echo "bench: not enough free space" >&2; exit 1; }

nginx_pid=
cleanup() {
  [[ -n $nginx_pid ]] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null || true
  if [[ ${KEEP:-} != 1 ]]; then rm -rf "$dir"; fi
}
trap cleanup EXIT

# The image: a quarter-ish of real OS data, zeros, random data, zeros.
img=$dir/image.raw
if [[ ! -s $img ]]; then
  echo "bench: building the ${mib} MiB image"
  os=$(( mib * 5 / 16 )); zero1=$(( mib / 4 )); rnd=$(( mib * 3 / 16 ))
  {
    find /usr/lib /usr/share /usr/bin -type f -size +16k -print0 2>/dev/null | xargs -0 cat 2>/dev/null | head -c "$((os << 20))" || true
    head -c "$((zero1 << 20))" /dev/zero
    head -c "$((rnd << 20))" /dev/urandom
  } > "$img"
  truncate -s "$((mib << 20))" "$img"   # the rest is zeros
  zstd -q -T0 -3 -f "$img" -o "$img.zst"
fi
size=$(stat -c %s "$img")
sha=$(sha256sum "$img" | cut -d" " -f1)
echo "bench: image $size bytes, zst $(stat -c %s "$img.zst") bytes, sha256 $sha"

bin=$dir/lpmos-image
go build -o "$bin" ./images/cmd/lpmos-image

# nginx on a free loopback port.
port=
for _ in $(seq 20); do
  p=$(( 20000 + RANDOM % 20000 ))
  if ! ss -ltn "sport = :$p" | grep -q LISTEN; then port=$p; break; fi
done
mkdir -p "$dir/nginx"
cat > "$dir/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $dir/nginx; proxy_temp_path $dir/nginx; fastcgi_temp_path $dir/nginx;
  uwsgi_temp_path $dir/nginx; scgi_temp_path $dir/nginx;
  server { listen 127.0.0.1:$port; root $dir; }
}
CONF
nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" &
nginx_pid=$!
for _ in $(seq 50); do curl -sfI "http://127.0.0.1:$port/image.raw" >/dev/null && break; sleep 0.1; done
url=http://127.0.0.1:$port/image.raw

out=$dir/target.img
results=$dir/results.txt
: > "$results"

# Each method writes a fresh target file; records wall seconds and CPU
# seconds (user + sys of every process in the method, nginx excluded).
run() { # name command...
  local name=$1; shift
  rm -f "$out"; sync
  local TIMEFORMAT='%R %U %S' t
  if ! t=$( { time "$@" >/dev/null 2>>"$dir/errors.log"; } 2>&1 ); then
    echo "bench: $name failed:" >&2; tail -5 "$dir/errors.log" >&2; exit 1
  fi
  echo "$name $(echo "$t" | awk '{printf "%.3f", $1}')" >> "$results"
  echo "cpu-$name $(echo "$t" | awk '{printf "%.3f", $2 + $3}')" >> "$results"
}
ours() { # format url
  local json; json=$("$bin" write --json --direct --url "$2" --format "$1" --size "$size" --sha256 "$sha" "$out")
  # The read-back is extra work the others do not do: record it apart.
  echo "$json" | sed -E 's/.*"Verify":([0-9]+).*/\1/' > "$dir/verify.ns"
  echo "verify-$1 $(awk '{printf "%.3f", $1 / 1e9}' "$dir/verify.ns")" >> "$results"
}
pipe_raw() { curl -s "$url" | dd of="$out" bs=4M oflag=direct status=none; }
pipe_zst() { curl -s "$url.zst" | zstd -q -d | dd of="$out" bs=4M oflag=direct status=none; }
net_raw() { curl -s "$url" -o /dev/null; }
net_zst() { curl -s "$url.zst" | zstd -q -d -o /dev/null; }
dd_alone() { dd if="$img" of="$out" bs=4M oflag=direct status=none; }
check() { cmp -n "$size" "$img" "$out" || { echo "bench: $1 wrote a wrong image" >&2; exit 1; }; }

# Warm the page cache for the served files so every method reads from memory.
cat "$img" "$img.zst" > /dev/null

for r in $(seq "$rounds"); do
  echo "bench: round $r/$rounds"
  methods=(ours-raw ours-zst pipe-raw pipe-zst dd net-raw net-zst)
  # Rotate the order each round.
  for i in $(seq 0 6); do
    m=${methods[$(( (i + r) % 7 ))]}
    case $m in
      ours-raw|ours-zst)
        f=${m#ours-}; u=$url; [[ $f == zst ]] && u=$url.zst
        run "$m-total" ours "$f" "$u"
        # Write phase = wall time minus the read-back the writer reported.
        v=$(cat "$dir/verify.ns")
        echo "$m $(grep "^$m-total " "$results" | tail -1 | awk -v v="$v" '{printf "%.3f", $2 - v / 1e9}')" >> "$results" ;;
      pipe-raw) run pipe-raw pipe_raw ;;
      pipe-zst) run pipe-zst pipe_zst ;;
      dd) run dd dd_alone ;;
      net-raw) run net-raw net_raw; continue ;;
      net-zst) run net-zst net_zst; continue ;;
    esac
    [[ $r == 1 ]] && check "$m"
  done
done

median() { grep "^$1 " "$results" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2] + a[NR/2+1]) / 2}'; }
mbs() { awk -v s="$1" -v b="$size" 'BEGIN {printf "%.0f", b / s / 1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b / a}'; }

echo
echo "medians over $rounds interleaved rounds, ${mib} MiB image, target on $(df -P "$dir" | awk 'NR==2 {print $1}'):"
printf '  %-34s %7s s  %5s MB/s   cpu %s s\n' "dd alone (raw, bs=4M oflag=direct)" "$(median dd)" "$(mbs "$(median dd)")" "$(median cpu-dd)"
for f in raw zst; do
  o=$(median "ours-$f"); t=$(median "ours-$f-total"); p=$(median "pipe-$f"); d=$(median dd)
  printf '  %-34s %7s s  %5s MB/s   (no disk: the network+decode ceiling)\n' "download only ($f, to /dev/null)" "$(median "net-$f")" "$(mbs "$(median "net-$f")")"
  printf '  %-34s %7s s  %5s MB/s   cpu %s s\n' "pipeline ($f)" "$p" "$(mbs "$p")" "$(median "cpu-pipe-$f")"
  printf '  %-34s %7s s  %5s MB/s   %sx pipeline, %sx dd\n' "lpmos writer ($f, write+fsync)" "$o" "$(mbs "$o")" "$(ratio "$o" "$p")" "$(ratio "$o" "$d")"
  printf '  %-34s %7s s  (read-back verify %s s)   cpu %s s\n' "lpmos writer ($f, with read-back)" "$t" "$(median "verify-$f")" "$(median "cpu-ours-$f-total")"
done
echo "  bar: >= 1.50x pipeline and >= 0.85x dd, for raw and zst"
echo "  load average now: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (CPU-bound methods suffer most from other load)"
