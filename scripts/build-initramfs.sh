#!/usr/bin/env bash
# Build the agent's netboot pair: build/initramfs/vmlinuz (Debian's kernel, from
# scripts/fetch-kernel.sh) and build/initramfs/initramfs.cpio.gz. See
# agent-initramfs/README.md. Prints the sizes and the build time.
#
# The initramfs is two gzipped cpio archives back to back (the kernel unpacks each in
# turn, later files winning):
#   1. u-root v0.16.0 in module mode: init, the gosh rescue shell, a few commands, and
#      /bin/uinit -> /bin/lpmos-agent --initramfs. Built from the tools module in
#      agent-initramfs/uroot/ (its own go.mod, so u-root's dependencies stay out of
#      the main module's). Slow to build (minutes on 2 busy cores), so it is cached
#      under build/initramfs/cache/, keyed by the commands' module versions, the Go
#      version and the command list.
#   2. The agent (a static `go build`, not busyboxed) and the kernel modules of
#      agent-initramfs/modules.txt with their dependencies under
#      /lpmos/modules/<release>/ (not /lib/modules: u-root's init would load them all,
#      unordered). Rebuilt every time, in seconds.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH=/usr/local/go/bin:$PATH
start=$(date +%s)

budget_mib=40 # compressed initramfs; the build fails above it

kdir=$(scripts/fetch-kernel.sh)
kver=$(basename "$(ls -d "$kdir"/lib/modules/*/ | head -n1)")
out="$top/build/initramfs"
cache="$out/cache"
mkdir -p "$out" "$cache"
# One build at a time (VM tests of several packages may start it together); the second
# then finds the base cached.
exec 9>"$out/.lock"
flock 9
# Outside the tree: u-root generates Go packages in its tmp dir, which `go list ./...`
# and `go vet ./...` running beside the build must not see.
stage=$(mktemp -d "${TMPDIR:-/tmp}/lpmos-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# u-root and its commands come from the tools module (agent-initramfs/uroot/go.mod):
# u-root builds in module mode from the go.mod of the directory it runs in.
tools="$top/agent-initramfs/uroot"
(cd "$tools" && go build -o "$stage/u-root" github.com/u-root/u-root)
uroot() { (cd "$tools" && "$stage/u-root" -tmp-dir "$stage" -skip-ldd "$@") 2> "$stage/u-root.log" || { cat "$stage/u-root.log" >&2; exit 1; }; }

# 1. The u-root base. Core commands are pinned in agent-initramfs/uroot/go.mod by its tools.go.
cmds=(init gosh ls cat ip dmesg mount ps lsmod mkdir more shutdown dhclient wget)
base_args=(-defaultsh gosh -uinitcmd "/bin/lpmos-agent --initramfs")
pkgs=()
for c in "${cmds[@]}"; do pkgs+=("github.com/u-root/u-root/cmds/core/$c"); done
# Keyed by the exact module versions the commands compile from, so go.mod changes
# elsewhere in the tree do not cost a rebuild.
key=$( { (cd "$tools" && go list -deps -f '{{with .Module}}{{.Path}}@{{.Version}}{{end}}' "${pkgs[@]}") | sort -u
         go version; echo "${cmds[*]} ${base_args[*]}"; } | sha256sum | cut -c1-16)
base="$cache/uroot-$key.cpio.gz"
if [ ! -f "$base" ]; then
  echo "build-initramfs: building the u-root base ($key); this takes minutes" >&2
  uroot -o "$stage/base.cpio" "${base_args[@]}" "${pkgs[@]}"
  gzip -9 -n <"$stage/base.cpio" >"$stage/base.cpio.gz"
  rm -f "$cache"/uroot-*.cpio.gz
  mv "$stage/base.cpio.gz" "$base"
fi

# 2. The agent and its modules.
go run ./agent-initramfs/modbundle -src "$kdir/lib/modules/$kver" -dst "$stage/modules" \
  -list agent-initramfs/modules.txt >&2
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$stage/lpmos-agent" ./agent-initramfs/cmd/lpmos-agent
uroot -o "$stage/agent.cpio" -base /dev/null -nocmd -initcmd= -uinitcmd= -defaultsh= \
  -files "$stage/lpmos-agent:bin/lpmos-agent" \
  -files "$stage/modules:lpmos/modules/$kver"
gzip -9 -n <"$stage/agent.cpio" >"$stage/agent.cpio.gz"

cat "$base" "$stage/agent.cpio.gz" >"$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
cp "$kdir/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "$kver" >"$out/kernel-release"

size=$(stat -c %s "$out/initramfs.cpio.gz")
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }
echo "build-initramfs: $out/initramfs.cpio.gz $(mib "$size") (u-root base $(mib "$(stat -c %s "$base")") + agent and $(ls "$stage/modules"/*.ko* | wc -l) modules $(mib "$(stat -c %s "$stage/agent.cpio.gz")"); budget ${budget_mib} MiB), vmlinuz $(mib "$(stat -c %s "$out/vmlinuz")"), $(( $(date +%s) - start ))s"
if [ "$size" -gt $((budget_mib * 1048576)) ]; then
  echo "build-initramfs: over the ${budget_mib} MiB budget" >&2
  exit 1
fi
