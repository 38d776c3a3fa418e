#!/usr/bin/env bash
# Build the LPMOS test OS: a tiny raw disk image that boots under BIOS and UEFI, runs
# Debian's kernel with a one-binary initramfs, prints "LPMOS-TESTOS-BOOTED ..." on the
# serial console and powers off. End-to-end tests install it and boot the result.
#
# Layout (one image, both firmwares, no root or loop mounts needed):
#   sector 0        MBR: syslinux mbr.bin boot code, DOS label id 0x4c504d4f, one entry
#   1 MiB .. end    partition 1: type 0xEF (EFI System), active, FAT16 "TESTOS"
#                     ldlinux.sys/.c32 + syslinux.cfg   BIOS: mbr.bin -> active partition -> syslinux
#                     EFI/BOOT/BOOTX64.EFI + loader/     UEFI: removable-media path -> systemd-boot
#                     vmlinuz, initrd.img                shared by both loaders
# Plain MBR rather than GPT: SeaBIOS+mbr.bin and OVMF both boot it, with no hybrid tricks,
# and nothing lives at the end of the disk (no GPT backup header), so the image still boots
# unchanged after the agent writes it onto a disk of any larger size.
# FAT16 rather than FAT32: FAT32 needs >= 65525 clusters (~32 MiB), this disk is ~10 MiB.
#
# Outputs in build/testos/: testos.img, testos.img.{zst,gz,xz}, testos.img.sha256.
# Idempotent: skipped when the inputs' hash matches the last build; outputs are renamed
# into place atomically under a lock, so parallel test packages can call it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/build/testos"
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200} # fixed file times: reproducible
diskid=4c504d4f
cmdline="console=ttyS0,115200 panic=-1 quiet lpmos.disk=PARTUUID=$diskid-01"
mbr=/usr/lib/syslinux/mbr/mbr.bin
sdboot=/usr/lib/systemd/boot/efi/systemd-bootx64.efi

missing=()
for tool in go sfdisk mkfs.fat syslinux mcopy mmd zstd gzip xz sha256sum flock; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
for f in "$mbr" "$sdboot"; do [ -f "$f" ] || missing+=("$f"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-testos: missing: ${missing[*]} (apt-get install syslinux syslinux-common mtools dosfstools fdisk systemd-boot-efi zstd xz-utils)" >&2
  exit 2 # 2 = tools missing: tests skip on it
fi

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

kdir=$("$top/scripts/fetch-kernel.sh") || { echo "build-testos: cannot fetch the kernel" >&2; exit 3; }
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -n1)
kver=${vmlinuz##*/vmlinuz-}
# The init needs no modules: the serial console and the gzip initramfs must be built in.
for opt in SERIAL_8250 SERIAL_8250_CONSOLE BLK_DEV_INITRD RD_GZIP EFI_STUB; do
  grep -qx "CONFIG_$opt=y" "$kdir/boot/config-$kver" || { echo "build-testos: kernel $kver lacks CONFIG_$opt=y" >&2; exit 1; }
done

# Everything that shapes the image; an unchanged hash means the last build still holds.
stamp=$( { cat "$0" "$top"/images/testos/init/*.go "$top"/images/testos/mkinitrd/*.go "$vmlinuz" "$mbr" "$sdboot" \
  /usr/lib/syslinux/modules/bios/ldlinux.c32 2>/dev/null; go version; echo "$cmdline"; } | sha256sum | cut -c1-64)
if [ -f "$out/testos.img" ] && [ -f "$out/testos.img.zst" ] && [ -f "$out/testos.img.sha256" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "build-testos: up to date ($kver)" >&2
else
  work=$(mktemp -d "$out/work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  esp="$work/esp"
  mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries"

  # Static init + gzip'd cpio (written by Go: no root needed for /dev/console, reproducible).
  (cd "$top" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -ldflags='-s -w -buildid=' -o "$work/init" ./images/testos/init \
    && go build -o "$work/mkinitrd" ./images/testos/mkinitrd)
  "$work/mkinitrd" -init "$work/init" -o "$esp/initrd.img"
  cp "$vmlinuz" "$esp/vmlinuz"
  cp "$sdboot" "$esp/EFI/BOOT/BOOTX64.EFI"
  cat >"$esp/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT testos
PROMPT 0
TIMEOUT 0
LABEL testos
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline lpmos.loader=syslinux
EOF
  printf 'default testos.conf\ntimeout 0\nconsole-mode keep\n' >"$esp/loader/loader.conf"
  cat >"$esp/loader/entries/testos.conf" <<EOF
title   LPMOS test OS
linux   /vmlinuz
initrd  /initrd.img
options $cmdline lpmos.loader=systemd-boot
EOF
  find "$esp" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

  # Partition: the files + ~200 KiB syslinux + FAT overhead, rounded up to whole MiB.
  bytes=$(du -sb "$esp" | cut -f1)
  part_mib=$(( (bytes + 768*1024) / 1048576 + 1 ))
  part="$work/part.img"
  mkfs.fat -F 16 -n TESTOS --invariant -i "$diskid" -h 2048 -C "$part" $((part_mib * 1024)) >/dev/null
  syslinux --install "$part"
  # -m keeps the staged mtimes; -s recursive. mtools would otherwise stamp "now".
  for d in EFI EFI/BOOT loader loader/entries; do mmd -i "$part" "::/$d"; done
  (cd "$esp" && for f in $(find . -type f | sort); do mcopy -m -i "$part" "$f" "::/${f#./}"; done)

  img="$work/testos.img"
  truncate -s $(( (part_mib + 1) * 1048576 )) "$img"
  printf 'label: dos\nlabel-id: 0x%s\nunit: sectors\nstart=2048, type=ef, bootable\n' "$diskid" | sfdisk -q "$img"
  dd if="$mbr" of="$img" bs=440 count=1 conv=notrunc status=none
  dd if="$part" of="$img" bs=1M seek=1 conv=notrunc status=none

  zstd -q -19 -T0 -f "$img" -o "$img.zst"
  gzip -9n -c "$img" >"$img.gz"
  xz -9 -T1 -c "$img" >"$img.xz"
  (cd "$work" && sha256sum testos.img >testos.img.sha256)
  for f in testos.img testos.img.zst testos.img.gz testos.img.xz testos.img.sha256; do mv -f "$work/$f" "$out/$f"; done
  echo "$stamp" >"$out/.stamp"
  echo "build-testos: built for kernel $kver" >&2
fi

for f in testos.img testos.img.zst testos.img.gz testos.img.xz; do
  printf 'build-testos: %-16s %9d bytes (%s)\n' "$f" "$(stat -c %s "$out/$f")" "$(numfmt --to=iec-i --suffix=B "$(stat -c %s "$out/$f")")" >&2
done
echo "$out/testos.img"
