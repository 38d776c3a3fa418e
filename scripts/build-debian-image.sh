#!/usr/bin/env bash
# Build a Debian 12 cloud image for LPMOS from Debian's packages: a raw disk that boots
# under BIOS and UEFI, runs cloud-init (NoCloud: the seed the agent writes, or
# NoCloud-net) and openssh-server. `make debian-image`; add it to a region with
#   bin/lpmos-image add --dir run/images --os-type debian --os-version 12 build/debian/debian-12.img.zst
#
# Layout (the test OS's, with a root filesystem; no loop or root mounts needed):
#   sector 0        MBR: syslinux mbr.bin, DOS label id 0x4c504d44
#   1 MiB           partition 1: type 0xEF (EFI System), active, FAT32 "LPMOS-BOOT"
#                     syslinux (BIOS) + EFI/BOOT/BOOTX64.EFI systemd-boot (UEFI),
#                     vmlinuz + initrd.img shared by both
#   then            partition 2: ext4 "lpmos-root", UUID $root_uuid, made by mkfs.ext4 -d
#                   from the mmdebstrap tree; root=UUID= on the command line
# The agent adds cloud-init's CIDATA partition after partition 2 (images/seed).
# MBR, not GPT, for the test OS's reason: nothing lives at the disk's end.
#
# cloud-init's default locale is C.UTF-8 (nothing to generate on first boot; its locale
# module needs update-locale from the locales package, else its status is "error").
# Kernel: $DEBIAN_KERNEL (default linux-image-cloud-amd64: virtio and the common cloud
# drivers, small; set linux-image-amd64 for real servers' drivers).
# Outputs in build/debian/: debian-12.img, debian-12.img.zst, debian-12.img.sha256.
# Idempotent: skipped when the inputs' hash matches the last build (like the initramfs).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/build/debian"
export PATH=$PATH:/usr/sbin:/sbin
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}
kernel_pkg=${DEBIAN_KERNEL:-linux-image-cloud-amd64}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
diskid=4c504d44
root_uuid=4c504d4f-0012-4deb-8000-00000000d12e
cmdline="root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200 net.ifnames=0"
mbr=/usr/lib/syslinux/mbr/mbr.bin
sdboot=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
packages=(systemd-sysv udev dbus "$kernel_pkg" initramfs-tools cloud-init openssh-server sudo
  ifupdown isc-dhcp-client iproute2 netbase ca-certificates less locales)

# stdout carries only the image's path (tests read it): every tool's chatter (mkfs.ext4
# says "Creating regular file" even with -q) goes to stderr.
exec 3>&1 1>&2

missing=()
for tool in mmdebstrap sfdisk mkfs.fat mkfs.ext4 syslinux mcopy mmd zstd sha256sum flock; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
for f in "$mbr" "$sdboot"; do [ -f "$f" ] || missing+=("$f"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-debian-image: missing: ${missing[*]} (apt-get install mmdebstrap fdisk dosfstools e2fsprogs syslinux syslinux-common mtools systemd-boot-efi zstd)" >&2
  exit 2 # 2 = tools missing: tests skip on it
fi
if [ "$(id -u)" != 0 ]; then
  echo "build-debian-image: run as root (mmdebstrap's root mode keeps file owners for mkfs.ext4 -d)" >&2
  exit 2
fi

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

# The archive moves: a day's stamp (plus this script) decides whether to rebuild.
stamp=$( { cat "$0"; echo "$kernel_pkg $mirror $(date -u +%Y-%m-%d)"; } | sha256sum | cut -c1-64)
if [ -f "$out/debian-12.img.zst" ] && [ -f "$out/debian-12.img.sha256" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "build-debian-image: up to date" >&2
else
  start=$(date +%s)
  work=$(mktemp -d "$out/work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root="$work/root"
  # Docs, man pages and locales stay out (copyright files stay in).
  mmdebstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='echo "UUID='"$root_uuid"' / ext4 errors=remount-ro 0 1" > "$1/etc/fstab"' \
    --customize-hook='printf "datasource_list: [ NoCloud, None ]\nlocale: C.UTF-8\n" > "$1/etc/cloud/cloud.cfg.d/90-lpmos.cfg"' \
    --customize-hook='printf "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n" > "$1/etc/network/interfaces"' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*; : > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"; echo debian > "$1/etc/hostname"' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    bookworm "$root" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main" >&2

  kver=$(basename "$(ls "$root"/boot/vmlinuz-* | head -n1)" | sed 's/^vmlinuz-//')
  esp="$work/esp"
  mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries"
  cp "$root/boot/vmlinuz-$kver" "$esp/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$esp/initrd.img"
  cp "$sdboot" "$esp/EFI/BOOT/BOOTX64.EFI"
  cat >"$esp/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
EOF
  printf 'default debian.conf\ntimeout 0\nconsole-mode keep\n' >"$esp/loader/loader.conf"
  printf 'title   Debian 12 (LPMOS)\nlinux   /vmlinuz\ninitrd  /initrd.img\noptions %s\n' "$cmdline" >"$esp/loader/entries/debian.conf"

  # ESP: FAT32 needs >= 65525 clusters: 64 MiB of 512-byte clusters.
  esp_mib=64
  part1="$work/esp.img"
  mkfs.fat -F 32 -s 1 -S 512 -n LPMOS-BOOT --invariant -i "$diskid" -C "$part1" $((esp_mib * 1024)) >/dev/null
  syslinux --install "$part1"
  for d in EFI EFI/BOOT loader loader/entries; do mmd -i "$part1" "::/$d"; done
  (cd "$esp" && for f in $(find . -type f | sort); do mcopy -m -i "$part1" "$f" "::/${f#./}"; done)

  # Root: the tree plus a quarter and 256 MiB of room (logs, cloud-init, apt).
  used_mib=$(( $(du -sxm "$root" | cut -f1) ))
  root_mib=$(( used_mib + used_mib / 4 + 256 ))
  part2="$work/root.ext4"
  mkfs.ext4 -q -F -L lpmos-root -U "$root_uuid" -E root_owner=0:0 -d "$root" "$part2" "${root_mib}M"

  img="$work/debian-12.img"
  truncate -s $(( (1 + esp_mib + root_mib) * 1048576 )) "$img"
  printf 'label: dos\nlabel-id: 0x%s\nunit: sectors\nstart=2048, size=%d, type=ef, bootable\nstart=%d, type=83\n' \
    "$diskid" $((esp_mib * 2048)) $(((1 + esp_mib) * 2048)) | sfdisk -q "$img"
  dd if="$mbr" of="$img" bs=440 count=1 conv=notrunc status=none
  dd if="$part1" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$part2" of="$img" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none

  zstd -q -10 -T0 -f "$img" -o "$img.zst"
  (cd "$work" && sha256sum debian-12.img >debian-12.img.sha256)
  for f in debian-12.img debian-12.img.zst debian-12.img.sha256; do mv -f "$work/$f" "$out/$f"; done
  echo "$stamp" >"$out/.stamp"
  echo "build-debian-image: built in $(( $(date +%s) - start )) s (kernel $kver, root $used_mib MiB used of $root_mib MiB)" >&2
fi

for f in debian-12.img debian-12.img.zst; do
  printf 'build-debian-image: %-18s %10d bytes (%s)\n' "$f" "$(stat -c %s "$out/$f")" "$(numfmt --to=iec-i --suffix=B "$(stat -c %s "$out/$f")")" >&2
done
echo "$out/debian-12.img.zst" >&3
