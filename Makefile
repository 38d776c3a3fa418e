# LPMOS — see README.md. `make run` and `make test` are the two commands that matter.
GO      ?= go
BIN     := bin
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build run test test-short bench storm start-etcd initramfs testos debian-image demo vagrant-lab clean appliance-image deb test-appliance

all: build

build:
	$(GO) build -o $(BIN)/ ./appliance/cmd/lpmos-appliance ./control/cmd/lpmos-control ./agent-initramfs/cmd/lpmos-agent ./store/cmd/lpmos-etcd ./images/cmd/lpmos-image ./lab/cmd/lpmos-lab

# Debian's kernel + the u-root initramfs with the agent (build/initramfs/).
initramfs:
	./scripts/build-initramfs.sh

# The tiny bootable test OS image (build/testos/).
testos:
	./scripts/build-testos.sh

# A Debian 12 cloud image (cloud-init, openssh-server, BIOS+UEFI) from Debian's
# packages with mmdebstrap (build/debian/debian-12.img.zst; root).
debian-image:
	./scripts/build-debian-image.sh

# The flashable appliance image (root): build/appliance/lpmos-appliance.img and .img.zst
# (docs/appliance.md). Cached: a second run with no change takes seconds.
appliance-image:
	./scripts/build-appliance-image.sh

# The Debian package: build/deb/lpmos_<version>_amd64.deb (docs/appliance.md).
deb:
	./scripts/build-deb.sh

# The image booted in QEMU provisioning a second VM, and the .deb installed into a fresh
# Debian root (root; CI runs it after make test).
test-appliance: appliance-image deb
	LPMOS_APPLIANCE_IMAGE=$(CURDIR)/build/appliance/lpmos-appliance.img LPMOS_DEB=$$(ls $(CURDIR)/build/deb/lpmos_*_amd64.deb) \
		$(GO) test -count=1 -timeout 40m -v -run 'TestApplianceImage|TestDeb' ./lab/appliancevm/ ./dist/

# The VM lab for a person (root): boot network, appliance, control plane, one PXE VM.
demo: build initramfs testos
	$(BIN)/lpmos-lab

# The whole system on one host: control plane + appliance dc1 on the appliance's embedded etcd.
# The Vagrant/libvirt lab once, end to end, as its CI test runs it (root; docs/vagrant.md).
vagrant-lab: build initramfs testos
	$(BIN)/lpmos-lab vagrant

run: build
	./scripts/run.sh

# Standalone etcd (embedded etcd v3.6 in a small binary) for the multi-process setup.
start-etcd: build
	$(BIN)/lpmos-etcd --data-dir=run/etcd

# Our packages, without generated build staging under build/.
PKGS = $(shell $(GO) list -e ./... | grep -v '/build/')

test:
	$(GO) vet $(PKGS)
	rm -f build/lab-timings.txt
	LPMOS_TIMINGS_FILE=$(CURDIR)/build/lab-timings.txt $(GO) test -count=1 -timeout 40m $(PKGS)
	@cat build/lab-timings.txt 2>/dev/null || echo "(no VM lab timings: the lab was skipped)"

test-short:
	$(GO) test -short -count=1 $(PKGS)

# A boot storm of N machines (default 200) against one appliance + control plane in a temp
# dir: per-stage latency, errors, the appliance's CPU and peak RSS (storm/, docs/storm.md).
# DHCP=1 adds the proxy-DHCP stage (root); IMAGE_MB (4) sizes the image.
N ?= 200
storm: build
	$(GO) build -o $(BIN)/ ./storm/cmd/lpmos-storm
	N=$(N) ./scripts/storm.sh

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./store/...
	$(GO) test -run '^$$' -bench BenchmarkPagesAt10k -benchtime 20x ./control/

clean:
	rm -rf $(BIN) build run
