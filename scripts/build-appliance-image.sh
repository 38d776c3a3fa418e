#!/usr/bin/env bash
# Build the flashable appliance image: build/appliance/lpmos-appliance.img (raw) and
# .img.zst. docs/appliance.md says how to flash, configure and upgrade it.
#
# Layout (MBR, disk id 0x4c504d41; one image boots under BIOS and UEFI):
#   sector 0           syslinux mbr.bin: BIOS boots the active partition
#   1 MiB .. 128 MiB   1: FAT32 "LPMOS", type 0xEF (EFI System), active: the settings
#                         (lpmos.env, ssh_authorized_keys) and the boot files:
#                         BIOS: ldlinux.sys + syslinux.cfg; UEFI: the removable-media
#                         path EFI/BOOT/BOOTX64.EFI (systemd-boot) + loader/;
#                         both load vmlinuz + initrd.img (Debian's, initramfs-tools)
#   128 MiB .. 1 GiB   2: ext4 "lpmos-root": Debian 12 (mmdebstrap, minbase + systemd,
#                         linux-image-amd64), the LPMOS binaries, the agent's kernel and
#                         initramfs, the units of dist/
#   1 GiB .. end       3: ext4 "lpmos-data", not in the image: made on first boot on the
#                         rest of the disk (dist/image/bin/lpmos-data-setup); a re-flash
#                         rewrites only the first GiB, so the data survives it
# MBR rather than GPT: nothing at the disk's end (no backup header), so the image boots
# on a disk of any size and the data partition simply grows; syslinux's mbr.bin and
# OVMF both boot it. The cost: partitions end at 2 TiB.
#
# Needs root (mmdebstrap's root mode, extracting a root file system with its owners);
# no loop devices or mounts: file systems are built in files (mkfs.ext4 -d, mkfs.fat +
# mtools) and written into the image with dd.
#
# Cached: the Debian root (minutes) under build/appliance/cache/, keyed by its package
# list and hooks; the whole image keyed by every input, so an unchanged second run only
# rebuilds the Go binaries (cached by go) and takes seconds.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
out="$top/build/appliance"
cache="$out/cache"
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
t0=$(date +%s)
diskid=4c504d41
suite=bookworm
fat_mib=127  # partition 1: 1 MiB .. 128 MiB
root_mib=896 # partition 2: 128 MiB .. 1 GiB
mbr=/usr/lib/syslinux/mbr/mbr.bin
sdboot=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
cmdline="root=PARTUUID=$diskid-02 rw console=tty0 console=ttyS0,115200 quiet systemd.firstboot=off modprobe.blacklist=floppy"

missing=()
for tool in go mmdebstrap mkfs.ext4 mkfs.fat syslinux mcopy mmd sfdisk zstd sha256sum flock; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
for f in "$mbr" "$sdboot"; do [ -f "$f" ] || missing+=("$f"); done
if [ ${#missing[@]} -gt 0 ]; then
	echo "build-appliance-image: missing: ${missing[*]} (apt-get install mmdebstrap e2fsprogs dosfstools mtools syslinux syslinux-common fdisk systemd-boot-efi zstd)" >&2
	exit 2 # tools missing: tests skip on it
fi
if [ "$(id -u)" != 0 ]; then
	echo "build-appliance-image: needs root (mmdebstrap and the root file system's owners)" >&2
	exit 2
fi

mkdir -p "$out" "$cache"
exec 9>"$out/.lock"
flock 9

# --- 1. The Debian root, cached -------------------------------------------------------
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { echo "build-appliance-image: cannot resolve linux-image-amd64 (apt-get update)" >&2; exit 1; }
packages=linux-image-amd64,$kpkg,initramfs-tools,zstd,systemd,systemd-sysv,systemd-timesyncd,systemd-resolved,udev,dbus,kmod,openssh-server,e2fsprogs,fdisk,dosfstools,iproute2,curl,procps,less,nano
# Docs, man pages and translations stay out (copyright files stay in).
dpkgopts=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/info/*')
# Run in the new root: identity per host at first boot, SSH off, networkd, modules an
# appliance never loads (sound, GPUs, wireless, media, InfiniBand) out of the image.
hook='set -e
echo lpmos-appliance >/etc/hostname
printf "127.0.0.1 localhost\n127.0.1.1 lpmos-appliance\n::1 localhost ip6-localhost ip6-loopback\n" >/etc/hosts
echo uninitialized >/etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*
systemctl disable ssh.service
systemctl enable systemd-networkd.service systemd-resolved.service systemd-timesyncd.service
passwd -l root
kver=$(ls /lib/modules)
cd /lib/modules/$kver/kernel
rm -rf sound drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging drivers/bluetooth drivers/isdn drivers/iio net/bluetooth net/mac80211 net/wireless
depmod -a $kver
update-initramfs -u -k $kver'
rootkey=$(printf '%s\n' "$suite" "$packages" "${dpkgopts[*]}" "$hook" | sha256sum | cut -c1-16)
rootfs="$cache/rootfs-$rootkey"
if [ ! -d "$rootfs" ]; then
	echo "build-appliance-image: building the Debian root ($rootkey): mmdebstrap $suite, minutes" >&2
	rm -rf "$cache"/rootfs-*
	printf '%s\n' "$hook" >"$cache/hook.sh"
	mmdebstrap --variant=minbase --include="$packages" "${dpkgopts[@]}" \
		--customize-hook="cp '$cache/hook.sh' \"\$1/tmp/lpmos-hook.sh\" && chroot \"\$1\" sh /tmp/lpmos-hook.sh && rm \"\$1/tmp/lpmos-hook.sh\"" \
		--format=directory "$suite" "$rootfs.tmp" >"$cache/mmdebstrap.log" 2>&1 || {
		tail -n 30 "$cache/mmdebstrap.log" >&2
		echo "build-appliance-image: mmdebstrap failed (log: $cache/mmdebstrap.log)" >&2
		exit 1
	}
	mv "$rootfs.tmp" "$rootfs"
fi

# --- 2. What LPMOS adds ---------------------------------------------------------------
work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
version=$(git -C "$top" describe --tags --always --dirty 2>/dev/null || echo dev)
mkdir -p "$work/bin"
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X lpmos.dev/lpmos/appliance.Version=$version" -o "$work/bin/" \
	./appliance/cmd/lpmos-appliance ./control/cmd/lpmos-control ./store/cmd/lpmos-etcd ./images/cmd/lpmos-image
# The agent's kernel and initramfs: build-initramfs.sh rebuilds every time (most of a
# cached run's time), so it runs only when what it builds from changed.
agentkey=$( {
	cat scripts/build-initramfs.sh scripts/fetch-kernel.sh agent-initramfs/modules.txt agent-initramfs/uroot/go.sum go.sum
	echo "$kpkg"
	go version
	go list -deps -f '{{if not .Standard}}{{range .GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{end}}' \
		./agent-initramfs/cmd/lpmos-agent ./agent-initramfs/modbundle | grep "^$top/" | sort | xargs cat
} | sha256sum | cut -c1-64)
if [ ! -f build/initramfs/initramfs.cpio.gz ] || [ "$(cat "$out/.agent-stamp" 2>/dev/null)" != "$agentkey" ]; then
	"$top/scripts/build-initramfs.sh" >&2
	echo "$agentkey" >"$out/.agent-stamp"
fi

stamp=$( {
	echo "$rootkey $cmdline $fat_mib $root_mib"
	cat "$0" "$mbr" "$sdboot" /usr/lib/syslinux/modules/bios/ldlinux.c32
	find dist docs/appliance.md -type f | sort | xargs cat
	cat "$work"/bin/* build/initramfs/vmlinuz build/initramfs/initramfs.cpio.gz
} 2>/dev/null | sha256sum | cut -c1-64)
if [ -f "$out/lpmos-appliance.img" ] && [ -f "$out/lpmos-appliance.img.zst" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "build-appliance-image: up to date" >&2
else
	# The root file system's tree: the cached Debian root plus LPMOS.
	r="$work/root"
	cp -a "$rootfs" "$r"
	install -m 0755 "$work"/bin/* "$r/usr/bin/"
	install -D -m 0755 dist/lpmos-appliance-run "$r/usr/lib/lpmos/lpmos-appliance-run"
	install -D -m 0644 build/initramfs/vmlinuz "$r/usr/lib/lpmos/agent/vmlinuz"
	install -D -m 0644 build/initramfs/initramfs.cpio.gz "$r/usr/lib/lpmos/agent/initramfs.cpio.gz"
	install -d "$r/usr/lib/lpmos/image" "$r/boot/lpmos" "$r/var/lib/lpmos" "$r/etc/issue.d"
	install -m 0755 dist/image/bin/* "$r/usr/lib/lpmos/image/"
	install -m 0644 dist/systemd/*.service dist/image/systemd/*.service "$r/usr/lib/systemd/system/"
	install -D -m 0644 dist/image/etc/appliance-image.conf "$r/etc/systemd/system/lpmos-appliance.service.d/image.conf"
	install -D -m 0644 dist/image/etc/wait-online.conf "$r/etc/systemd/system/systemd-networkd-wait-online.service.d/lpmos.conf"
	install -D -m 0644 dist/image/etc/journald.conf "$r/etc/systemd/journald.conf.d/lpmos.conf"
	install -D -m 0644 dist/image/etc/sshd.conf "$r/etc/ssh/sshd_config.d/lpmos.conf"
	install -D -m 0644 dist/sysusers-lpmos.conf "$r/usr/lib/sysusers.d/lpmos.conf"
	install -m 0644 dist/image/etc/fstab "$r/etc/fstab"
	install -m 0644 dist/default/lpmos-control dist/default/lpmos-etcd "$r/etc/default/"
	ln -sfn /boot/lpmos/lpmos.env "$r/etc/default/lpmos-appliance"
	ln -sfn /run/lpmos/status "$r/etc/issue.d/lpmos.issue"
	install -D -m 0644 docs/appliance.md "$r/usr/share/doc/lpmos/appliance.md"
	systemctl --root="$r" enable lpmos-appliance.service lpmos-network.service lpmos-data.service \
		lpmos-ssh.service lpmos-console.service >/dev/null 2>&1
	# No unattended apt runs on an appliance: it is upgraded by re-flash or the .deb.
	systemctl --root="$r" disable apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1
	kver=$(ls "$r/lib/modules")
	cp "$r/boot/vmlinuz-$kver" "$work/vmlinuz"
	cp "$r/boot/initrd.img-$kver" "$work/initrd.img"

	# Partition 2.
	mkfs.ext4 -q -L lpmos-root -E root_owner=0:0 -d "$r" "$work/root.img" "${root_mib}M"
	rm -rf "$r"

	# Partition 1: the settings and both boot loaders.
	esp="$work/esp"
	mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries"
	cp "$work/vmlinuz" "$work/initrd.img" "$esp/"
	cp "$sdboot" "$esp/EFI/BOOT/BOOTX64.EFI"
	printf 'SERIAL 0 115200\nDEFAULT lpmos\nPROMPT 0\nTIMEOUT 0\nLABEL lpmos\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' "$cmdline" >"$esp/syslinux.cfg"
	printf 'default lpmos.conf\ntimeout 0\nconsole-mode keep\n' >"$esp/loader/loader.conf"
	printf 'title   LPMOS appliance\nlinux   /vmlinuz\ninitrd  /initrd.img\noptions %s\n' "$cmdline" >"$esp/loader/entries/lpmos.conf"
	sed 's/$/\r/' dist/lpmos.env >"$esp/lpmos.env" # CRLF: readable in any laptop's editor
	printf '# Public SSH keys, one a line (ssh-ed25519 AAAA... you@laptop). None: SSH stays off.\r\n' >"$esp/ssh_authorized_keys"
	part="$work/part1.img"
	mkfs.fat -F 32 -s 1 -n LPMOS --invariant -i "$diskid" -C "$part" $((fat_mib * 1024)) >/dev/null
	syslinux --install "$part"
	for d in EFI EFI/BOOT loader loader/entries; do mmd -i "$part" "::/$d"; done
	(cd "$esp" && for f in $(find . -type f | sort); do mcopy -i "$part" "$f" "::/${f#./}"; done)

	img="$work/lpmos-appliance.img"
	truncate -s $(((1 + fat_mib + root_mib) * 1048576)) "$img"
	printf 'label: dos\nlabel-id: 0x%s\nunit: sectors\nstart=2048, size=%d, type=ef, bootable\nstart=%d, size=%d, type=83\n' \
		"$diskid" $((fat_mib * 2048)) $(((1 + fat_mib) * 2048)) $((root_mib * 2048)) | sfdisk -q "$img"
	dd if="$mbr" of="$img" bs=440 count=1 conv=notrunc status=none
	dd if="$part" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
	dd if="$work/root.img" of="$img" bs=1M seek=$((1 + fat_mib)) conv=notrunc,sparse status=none
	zstd -q -T0 -10 -f "$img" -o "$img.zst"
	(cd "$work" && sha256sum lpmos-appliance.img >lpmos-appliance.img.sha256)
	for f in lpmos-appliance.img lpmos-appliance.img.zst lpmos-appliance.img.sha256; do mv -f "$work/$f" "$out/$f"; done
	echo "$stamp" >"$out/.stamp"
	echo "build-appliance-image: built ($version, kernel $kver)" >&2
fi
for f in lpmos-appliance.img lpmos-appliance.img.zst; do
	printf 'build-appliance-image: %-24s %11d bytes (%s)\n' "$f" "$(stat -c %s "$out/$f")" "$(numfmt --to=iec-i --suffix=B "$(stat -c %s "$out/$f")")" >&2
done
echo "build-appliance-image: $(($(date +%s) - t0))s" >&2
echo "$out/lpmos-appliance.img"
