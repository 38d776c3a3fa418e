#!/usr/bin/env bash
# Copy Debian's iPXE builds (package `ipxe`) into netboot/ipxe/bin/, where
# //go:embed puts them into the appliance binary. The copies are committed
# (see netboot/ipxe/bin/README.md); run this to refresh them after an ipxe
# package update. An arm64 build is taken when Debian ships one.
# Usage: scripts/fetch-ipxe.sh [SRC_DIR]   (default /usr/lib/ipxe)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-/usr/lib/ipxe}
dst="$top/netboot/ipxe/bin"

if [ ! -e "$src/undionly.kpxe" ]; then
  echo "fetch-ipxe: $src/undionly.kpxe missing: apt-get install ipxe" >&2
  exit 1
fi
mkdir -p "$dst"
for f in undionly.kpxe ipxe.efi snponly.efi; do
  if [ -e "$src/$f" ]; then
    install -m 0644 "$(readlink -f "$src/$f")" "$dst/$f"   # ipxe.efi is a symlink into /boot
    echo "fetch-ipxe: $f ($(stat -c %s "$dst/$f") bytes)"
  else
    echo "fetch-ipxe: $src/$f not found, skipped" >&2
  fi
done
for f in arm64-efi/ipxe.efi ipxe-arm64.efi; do
  if [ -e "$src/$f" ]; then
    install -m 0644 "$(readlink -f "$src/$f")" "$dst/ipxe-arm64.efi"
    echo "fetch-ipxe: ipxe-arm64.efi from $f"
    break
  fi
done
(cd "$dst" && sha256sum ./*.kpxe ./*.efi > SHA256SUMS)
echo "$dst"
