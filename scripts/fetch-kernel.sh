#!/usr/bin/env bash
# Fetch Debian's current amd64 kernel into build/kernel/ without installing it into /boot:
# resolve linux-image-amd64's dependency (never hard-code the ABI), apt-get download, dpkg-deb -x.
# Prints the kernel directory: build/kernel/<pkg>/ with boot/vmlinuz-* and lib/modules/<ver>/.
# Idempotent: a second run reuses the cache.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cache="$top/build/kernel"
mkdir -p "$cache"

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then
  echo "fetch-kernel: cannot resolve linux-image-amd64 (run apt-get update first)" >&2
  exit 1
fi
dir="$cache/$pkg"
if [ ! -f "$dir/.done" ]; then
  tmp=$(mktemp -d "$cache/dl.XXXXXX")
  (cd "$tmp" && apt-get download -q "$pkg" >&2)
  rm -rf "$dir"
  dpkg-deb -x "$tmp"/"$pkg"_*.deb "$dir"
  rm -rf "$tmp"
  touch "$dir/.done"
fi
ln -sfn "$pkg" "$cache/current"
echo "$dir"
