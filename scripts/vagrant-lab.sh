#!/usr/bin/env bash
# Print the commands that bring up the LPMOS Vagrant/libvirt lab (docs/vagrant.md): build,
# the boot network, the appliance and the control plane on the host bound to the
# network's bridge, a task per VM MAC, `vagrant up`, and the teardown. It runs nothing;
# copy the commands (they depend on the same LPMOS_LAB_* variables as the Vagrantfile).
#
# Usage: scripts/vagrant-lab.sh            (LPMOS_LAB_VMS=4 LPMOS_LAB_FIRMWARE=uefi ... also work)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

# Keep in step with the Vagrantfile.
network=lpmos-boot
bridge=lpmosbr0
host_ip=10.88.0.1
range=10.88.0.100,10.88.0.200
vms=${LPMOS_LAB_VMS:-2}
firmware=${LPMOS_LAB_FIRMWARE:-mixed}
logdir=${LPMOS_LAB_LOGDIR:-run/vagrant}
nvram_dir=${LPMOS_LAB_NVRAM_DIR:-/var/lib/libvirt/qemu/nvram}
os_type=testos
os_version=1

if ! [[ $vms =~ ^[0-9]+$ ]] || [ "$vms" -lt 1 ] || [ "$vms" -gt 50 ]; then
  echo "vagrant-lab: LPMOS_LAB_VMS=$vms: want 1 to 50" >&2
  exit 2
fi
case $firmware in mixed | bios | uefi) ;; *)
  echo "vagrant-lab: LPMOS_LAB_FIRMWARE=$firmware: want mixed, bios or uefi" >&2
  exit 2
  ;;
esac

names=() macs=()
for i in $(seq 1 "$vms"); do
  nn=$(printf %02x "$i")
  fw=bios
  if [ "$firmware" = uefi ] || { [ "$firmware" = mixed ] && [ $((i % 2)) = 0 ]; }; then fw=uefi; fi
  names+=("pxe$nn-$fw")
  macs+=("52:54:00:88:00:$nn")
done

ipv6=""
if [ "${LPMOS_LAB_IPV6:-1}" != 0 ]; then
  ipv6="
  <ip family='ipv6' address='fd88::1' prefix='64'/>"
fi

cat <<EOF
# LPMOS Vagrant/libvirt lab: $vms VM(s) on the isolated libvirt network $network
# (bridge $bridge, host $host_ip/24, no libvirt DHCP): the appliance on this host serves
# DHCP, TFTP and HTTP boot on the bridge. See docs/vagrant.md.
#
EOF
for i in "${!names[@]}"; do
  echo "#   ${names[$i]}  MAC ${macs[$i]}  serial log $logdir/${names[$i]}-serial.log"
done
cat <<EOF

# 0. Once per host (as root): libvirt, vagrant-libvirt, firmware; then log in again.
sudo apt-get install -y libvirt-daemon-system qemu-system-x86 ovmf vagrant vagrant-libvirt
sudo usermod -aG libvirt "\$USER"

# 1. Build: binaries, the agent's kernel + initramfs, the test OS image in dc1's catalog.
cd $top
make build
scripts/build-initramfs.sh
scripts/build-testos.sh
mkdir -p run/vagrant/images
bin/lpmos-image add --dir run/vagrant/images --os-type $os_type --os-version $os_version build/testos/testos.img.zst

# 2. The boot network, before the appliance (it binds to the bridge) and the VMs.
#    (\`vagrant up\` would define the same network itself, but only as it starts the VMs.)
cat > run/vagrant/$network.xml <<'XML'
<network ipv6='yes'>
  <name>$network</name>
  <bridge name='$bridge' stp='on' delay='0'/>
  <ip address='$host_ip' netmask='255.255.255.0'/>$ipv6
</network>
XML
virsh -c qemu:///system net-define run/vagrant/$network.xml
virsh -c qemu:///system net-start $network

# 3. The appliance dc1 in full-DHCP mode on the bridge (root: DHCP :67, TFTP :69),
#    with its embedded etcd on 127.0.0.1:2379. Terminal 1:
sudo bin/lpmos-appliance --label=dc1 --dhcp-mode=full --dhcp-interface=$bridge \\
  --boot-server-ip=$host_ip --dhcp-range=$range \\
  --kernel=build/initramfs/vmlinuz --initramfs=build/initramfs/initramfs.cpio.gz \\
  --etcd-data-dir=run/vagrant/dc1.etcd --images-dir=run/vagrant/images

# 4. The control plane (UI: http://localhost:8080/). Terminal 2:
bin/lpmos-control --etcd-endpoints=127.0.0.1:2379

# 5. A task per VM (a VM without one lands under "unmatched" in the UI instead):
EOF
for mac in "${macs[@]}"; do
  echo "curl -sS -X POST http://localhost:8080/api/v1/tasks -H 'Content-Type: application/json' -d '{\"region_id\":\"dc1\",\"target_mac\":\"$mac\",\"os_type\":\"$os_type\",\"os_version\":\"$os_version\"}'"
done
cat <<EOF

# 6. Power on the VMs (no box, no SSH: vagrant returns once they are started).
LPMOS_LAB_VMS=$vms LPMOS_LAB_FIRMWARE=$firmware vagrant up --provider=libvirt

# 7. Watch: http://localhost:8080/ -> each task reaches "pending_approval" with the VM's
#    hardware; approve it there, watch the progress bar; the VM reboots into the test OS.
tail -F $logdir/${names[0]}-serial.log     # ends with LPMOS-TESTOS-BOOTED

# 8. Tear down: Ctrl-C the appliance and the control plane, then
LPMOS_LAB_VMS=$vms LPMOS_LAB_FIRMWARE=$firmware vagrant destroy -f
virsh -c qemu:///system net-destroy $network
virsh -c qemu:///system net-undefine $network
sudo rm -f $nvram_dir/lpmos-pxe*_VARS.fd
sudo rm -rf run/vagrant
EOF
