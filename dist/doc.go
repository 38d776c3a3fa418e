// Package dist holds what ships LPMOS to a host, as files rather than Go: the systemd
// units (systemd/), the appliance's settings template (lpmos.env, also
// /etc/default/lpmos-appliance), the service's start wrapper (lpmos-appliance-run), the
// flashable image's helpers (image/, scripts/build-appliance-image.sh) and the Debian
// package's metadata (deb/, scripts/build-deb.sh). docs/appliance.md describes them;
// deb_test.go installs the package into a fresh Debian root.
package dist
