#!/usr/bin/env bash
# Build a tiny test guest from Debian packages only:
#   OUT/vmlinuz      the kernel of Debian's linux-image-amd64
#   OUT/initrd.img   a busybox initramfs whose /init prints CLOUDD-GUEST-BOOTED on the
#                    serial console, loads virtio + ACPI button modules and powers off
#                    when the ACPI power button is pressed (busybox acpid)
# Usage: scripts/build-guest.sh OUT_DIR     (idempotent: skips what exists)
set -euo pipefail
out=${1:?usage: build-guest.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then exit 0; fi

for cmd in busybox dpkg-deb apt-get; do
  command -v "$cmd" >/dev/null || { echo "build-guest.sh: $cmd is missing (scripts/install.sh installs it)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$pkg" ] || { echo "build-guest.sh: cannot find the kernel package (apt-get update?)" >&2; exit 1; }
apt-get download -q "$pkg" >/dev/null 2>&1 || apt-get download "$pkg"
dpkg-deb -x ./*.deb kernel
kver=$(ls kernel/lib/modules)
mods=kernel/lib/modules/$kver/kernel

root=initramfs
mkdir -p "$root"/{bin,dev,proc,sys,etc/acpi/PWRF,lib/modules}
cp "$(command -v busybox)" "$root/bin/busybox"
for m in virtio/virtio.ko virtio/virtio_ring.ko virtio/virtio_pci_legacy_dev.ko virtio/virtio_pci_modern_dev.ko \
         virtio/virtio_pci.ko block/virtio_blk.ko acpi/button.ko input/evdev.ko; do
  cp "$mods/drivers/$m" "$root/lib/modules/"
done
cat > "$root/etc/acpi/PWRF/00000080" <<'SH'
#!/bin/busybox sh
echo CLOUDD-GUEST-POWEROFF > /dev/console
/bin/busybox poweroff -f
SH
chmod +x "$root/etc/acpi/PWRF/00000080"
cat > "$root/init" <<'SH'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk button evdev; do
  insmod /lib/modules/$m.ko 2>/dev/console || echo "insmod $m failed" > /dev/console
done
mkdir -p /var/run /var/log
acpid -c /etc/acpi -l /dev/console
echo "CLOUDD-GUEST-BOOTED $(uname -r) disks: $(ls /sys/block | tr '\n' ' ') input: $(ls /dev/input | tr '\n' ' ')" > /dev/console
while true; do sleep 3600; done
SH
chmod +x "$root/init"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$out/initrd.img"
cp "kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "guest kernel $kver and initramfs in $out"
