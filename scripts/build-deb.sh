#!/usr/bin/env bash
# Build the Debian package: build/deb/lpmos_<version>_amd64.deb, with dpkg-deb (no
# tools from outside Debian). What it installs (docs/appliance.md):
#   /usr/bin/lpmos-{appliance,control,etcd,image}   static Go binaries
#   /usr/lib/lpmos/lpmos-appliance-run              settings file -> flags, retries
#   /usr/lib/lpmos/agent/{vmlinuz,initramfs.cpio.gz} what booting machines run
#   /lib/systemd/system/lpmos-{appliance,control,etcd}.service (dist/systemd/)
#   /etc/default/lpmos-{appliance,control,etcd}     conffiles: upgrades keep them
#   /usr/lib/sysusers.d/lpmos.conf                  the system user lpmos
#   /var/lib/lpmos                                  state, kept on remove, gone on purge
# lpmos-appliance is enabled and started on first install; until REGION_LABEL is set
# in /etc/default/lpmos-appliance it says so in the journal and retries.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH=/usr/local/go/bin:$PATH
out="$top/build/deb"
mkdir -p "$out"
# Debian versions must start with a digit: 0~git<hash> until the project tags releases.
desc=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
case $desc in v[0-9]*) version=${desc#v} ;; *) version=0~git${desc} ;; esac
version=${version//-/+}
units="lpmos-appliance.service lpmos-control.service lpmos-etcd.service"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
r="$work/root"
mkdir -p "$r/DEBIAN" "$r/usr/bin"
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X lpmos.dev/lpmos/appliance.Version=$desc" -o "$r/usr/bin/" \
	./appliance/cmd/lpmos-appliance ./control/cmd/lpmos-control ./store/cmd/lpmos-etcd ./images/cmd/lpmos-image
"$top/scripts/build-initramfs.sh" >&2
install -D -m 0755 dist/lpmos-appliance-run "$r/usr/lib/lpmos/lpmos-appliance-run"
install -D -m 0644 build/initramfs/vmlinuz "$r/usr/lib/lpmos/agent/vmlinuz"
install -D -m 0644 build/initramfs/initramfs.cpio.gz "$r/usr/lib/lpmos/agent/initramfs.cpio.gz"
install -d "$r/lib/systemd/system" "$r/etc/default"
for u in $units; do install -m 0644 "dist/systemd/$u" "$r/lib/systemd/system/$u"; done
install -m 0644 dist/lpmos.env "$r/etc/default/lpmos-appliance"
install -m 0644 dist/default/lpmos-control dist/default/lpmos-etcd "$r/etc/default/"
install -D -m 0644 dist/sysusers-lpmos.conf "$r/usr/lib/sysusers.d/lpmos.conf"
install -D -m 0644 docs/appliance.md "$r/usr/share/doc/lpmos/appliance.md"
install -m 0644 dist/deb/copyright "$r/usr/share/doc/lpmos/copyright"
printf 'lpmos (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- LPMOS <lpmos@lpmos.dev>  %s\n' \
	"$version" "$desc" "$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")" |
	gzip -9n >"$r/usr/share/doc/lpmos/changelog.gz"
install -D -m 0644 dist/deb/lintian-overrides "$r/usr/share/lintian/overrides/lpmos"

for f in postinst prerm postrm; do install -m 0755 "dist/deb/$f" "$r/DEBIAN/$f"; done
(cd "$r" && find etc -type f | sed 's|^|/|' | sort) >"$r/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$r" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" dist/deb/control >"$r/DEBIAN/control"
(cd "$r" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$r/DEBIAN/md5sums"

deb="$out/lpmos_${version}_amd64.deb"
rm -f "$out"/lpmos_*_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$r" "$deb" >/dev/null
echo "build-deb: $deb $(stat -c %s "$deb") bytes" >&2
echo "$deb"
