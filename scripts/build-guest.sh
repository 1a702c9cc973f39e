#!/usr/bin/env bash
# Build a tiny test guest from Debian packages only:
#   OUT/vmlinuz      the kernel of Debian's linux-image-amd64
#   OUT/initrd.img   a busybox initramfs whose /init
#                      - loads virtio (pci, blk, net), virtio-scsi (+ sd, sr), iso9660/vfat and the
#                        ACPI button modules, in dependency order (from modules.dep)
#                      - with "cloudd.ip=<addr>/<len>" on the kernel command line (the kernel has
#                        no ip= autoconfiguration, the guest no DHCP client): gives eth0 that
#                        address, brings it up and prints "CLOUDD-GUEST-IP <addr>/<len>"
#                      - mounts a NoCloud seed (a filesystem labelled cidata), prints
#                        "CLOUDD-GUEST-SEED hostname=<local-hostname>" and sets the hostname,
#                        or prints "CLOUDD-GUEST-SEED none"
#                      - prints CLOUDD-GUEST-BOOTED on the serial console, then every second
#                        "CLOUDD-GUEST-HEARTBEAT uptime=<s> token=<16 hex>" (the token is random,
#                        drawn once per boot and kept in RAM only)
#                      - prints "CLOUDD-GUEST-HOTPLUG add|remove <kernel name>" for block
#                        devices that come or go while it runs
#                      - offers a root login on tty1 (the VNC screen)
#                      - powers off when the ACPI power button is pressed (busybox acpid)
#   OUT/disk.qcow2   a 64 MiB disk (MBR, one FAT16 partition, syslinux) that boots the same
#                    kernel + initramfs under SeaBIOS, command line "console=tty0 console=ttyS0"
#   OUT/boot.iso     the same as a bootable CD (isolinux), command line "… cloudd.boot=cd"
# The disk is built in userspace (sfdisk, mkfs.fat --offset, syslinux --offset, mtools):
# no mounts, no loop devices.
# Usage: scripts/build-guest.sh OUT_DIR
# Idempotent: OUT/.recipe holds a hash of this script; when it matches, only missing
# files are built (a missing disk.qcow2 is made from the existing vmlinuz + initrd.img);
# otherwise everything is rebuilt. Files are replaced by rename, so guests that are
# starting from OUT never see a half-written file; concurrent runs wait on OUT/.lock.
set -euo pipefail
out=${1:?usage: build-guest.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
exec 9>"$out/.lock"
flock 9
have() { [ -s "$out/$1" ]; }
same_recipe() { [ "$(cat "$out/.recipe" 2>/dev/null)" = "$recipe" ]; }
if same_recipe && have vmlinuz && have initrd.img && have disk.qcow2 && have boot.iso; then exit 0; fi

for cmd in busybox dpkg-deb apt-get sfdisk mkfs.fat syslinux mcopy qemu-img genisoimage; do
  command -v "$cmd" >/dev/null || { echo "build-guest.sh: $cmd is missing (scripts/install.sh installs it)" >&2; exit 1; }
done
mbr=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$mbr" ] || { echo "build-guest.sh: $mbr is missing (syslinux-common; scripts/install.sh installs it)" >&2; exit 1; }
[ -f /usr/lib/ISOLINUX/isolinux.bin ] || { echo "build-guest.sh: isolinux.bin is missing (isolinux; scripts/install.sh installs it)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# --- the kernel and the initramfs -----------------------------------------------------
build_initramfs() {  # writes $work/vmlinuz and $work/initrd.img
  local pkg kver tree root m
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || { echo "build-guest.sh: cannot find the kernel package (apt-get update?)" >&2; exit 1; }
  apt-get download -q "$pkg" >/dev/null 2>&1 || apt-get download "$pkg"
  dpkg-deb -x ./"$pkg"_*.deb kernel
  kver=$(ls kernel/lib/modules)
  tree=kernel/lib/modules/$kver
  # The package ships no modules.dep (postinst runs depmod): make one.
  [ -s "$tree/modules.dep" ] || busybox depmod -b kernel "$kver"

  root=initramfs
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,root,mnt/seed,var/run,var/log,etc/acpi/PWRF,lib/modules}
  cp "$(command -v busybox)" "$root/bin/busybox"
  # What the guest needs as modules (built in, per config-*: ACPI PCI hot-plug (acpiphp),
  # PCIe hot-plug, devtmpfs, serial 8250, VGA text console, JOLIET/ZISOFS):
  #   virtio_pci + virtio_blk   disks, hot-pluggable on pc (i440fx) through acpiphp
  #   virtio_net                NICs (eth0 gets cloudd.ip= from the command line)
  #   virtio_scsi sd_mod sr_mod SCSI disks and CD-ROMs (seed ISO, hot-plugged media)
  #   isofs vfat nls_*          seed filesystems (FAT default codepage 437, iocharset ascii)
  #   button evdev              ACPI power button for acpid
  # Their dependencies come from modules.dep; each is listed once, after what it needs.
  local wanted="virtio_pci virtio_blk virtio_net virtio_scsi sd_mod sr_mod isofs vfat nls_cp437 nls_ascii button evdev"
  awk -v wanted="$wanted" '
    { name = $1; sub(/:$/, "", name); key = name; sub(/.*\//, "", key); sub(/\.ko.*$/, "", key)
      path[key] = name; deps[key] = ""
      for (i = 2; i <= NF; i++) { d = $i; sub(/.*\//, "", d); sub(/\.ko.*$/, "", d); deps[key] = deps[key] " " d } }
    function visit(k,   n, i, list) {
      if (k in done) return
      if (!(k in path)) { print "build-guest.sh: module " k " not found" > "/dev/stderr"; exit 1 }
      done[k] = 1
      n = split(deps[k], list, " ")
      for (i = 1; i <= n; i++) visit(list[i])
      print k, path[k]
    }
    END { n = split(wanted, w, " "); for (i = 1; i <= n; i++) visit(w[i]) }
  ' "$tree/modules.dep" > modules.list
  : > "$root/etc/modules"
  while read -r name path; do
    case "$path" in *.ko) ;; *) echo "build-guest.sh: compressed module $path is not supported" >&2; exit 1 ;; esac
    cp "$tree/$path" "$root/lib/modules/$name.ko"
    echo "$name" >> "$root/etc/modules"
  done < modules.list

  cat > "$root/etc/acpi/PWRF/00000080" <<'SH'
#!/bin/busybox sh
echo CLOUDD-GUEST-POWEROFF > /dev/console
/bin/busybox poweroff -f
SH
  # Called by busybox uevent for every kernel uevent (the kernel has no uevent helper:
  # CONFIG_UEVENT_HELPER is off, so /proc/sys/kernel/hotplug does not exist).
  cat > "$root/bin/cloudd-hotplug" <<'SH'
#!/bin/busybox sh
[ "$SUBSYSTEM" = block ] || exit 0
case "$ACTION" in
  add|remove) echo "CLOUDD-GUEST-HOTPLUG $ACTION ${DEVPATH##*/}" > /dev/console ;;
esac
SH
  # A throw-away test guest reachable only on the host's VNC: root has an EMPTY password
  # (busybox login lets an empty password field in without asking). Never for real guests.
  echo 'root::0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  echo 'root:x:0:' > "$root/etc/group"
  echo 'cloudd test guest \n \l' > "$root/etc/issue"
  chmod +x "$root/etc/acpi/PWRF/00000080" "$root/bin/cloudd-hotplug"
  cat > "$root/init" <<'SH'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do
  params=
  # scan SCSI buses while the module loads (the default scans in the background), so the
  # seed CD-ROM is there before we look for it
  [ "$m" != scsi_mod ] || params=scan=sync
  insmod /lib/modules/$m.ko $params 2>/dev/console || echo "insmod $m failed" > /dev/console
done < /etc/modules
acpid -c /etc/acpi -l /dev/console
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    cloudd.ip=*)
      addr=${arg#cloudd.ip=}
      ip link set eth0 up && ip addr add "$addr" dev eth0 && echo "CLOUDD-GUEST-IP $addr" > /dev/console \
        || echo "CLOUDD-GUEST-IP failed $addr" > /dev/console ;;
  esac
done

# NoCloud seed: a filesystem labelled cidata (iso9660 or vfat). Module loading waits for
# the SCSI scan and driver probes, so the devices present at boot are there by now.
seed_dev=
for _ in 1 2 3 4 5 6 7 8 9 10; do  # a probe may still be finishing: look for up to 1 s
  seed_dev=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null || true)
  [ -z "$seed_dev" ] && ls /sys/block | grep -q '^sr' || break
  sleep 0.1
done
if [ -n "$seed_dev" ] && { mount -r -t iso9660 "$seed_dev" /mnt/seed 2>/dev/null || mount -r -t vfat "$seed_dev" /mnt/seed 2>/dev/null; }; then
  name=$(sed -n 's/^[[:space:]]*local-hostname[[:space:]]*:[[:space:]]*//p' /mnt/seed/meta-data 2>/dev/null | head -n 1 | tr -d "\"'\r" | sed 's/[[:space:]]*$//')
  echo "CLOUDD-GUEST-SEED hostname=$name" > /dev/console
  [ -z "$name" ] || hostname "$name"
  [ ! -f /mnt/seed/user-data ] || echo "CLOUDD-GUEST-SEED user-data-bytes=$(wc -c < /mnt/seed/user-data)" > /dev/console
else
  echo "CLOUDD-GUEST-SEED none" > /dev/console
fi

uevent /bin/cloudd-hotplug &
# the VNC screen: a login prompt on tty1, again after each logout
(while true; do getty 38400 tty1 linux; sleep 1; done) </dev/null >/dev/null 2>&1 &

disks=$( (ls /sys/block | grep '^vd'; ls /sys/block | grep -v '^vd') | tr '\n' ' ')
echo "CLOUDD-GUEST-BOOTED $(uname -r) disks: $disks input: $(ls /dev/input | tr '\n' ' ')" > /dev/console
# a token held in RAM only (the root is the initramfs): after a live migration the same
# token and a still-growing uptime prove the guest kept its memory and did not reboot
token=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
while true; do
  read -r up _ < /proc/uptime
  echo "CLOUDD-GUEST-HEARTBEAT uptime=$up token=$token" > /dev/console
  sleep 1
done
SH
  chmod +x "$root/init"
  (cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > initrd.img
  cp "kernel/boot/vmlinuz-$kver" vmlinuz
}

# --- the bootable disk ----------------------------------------------------------------
boot_cfg() {  # $1: more kernel arguments -> a syslinux/isolinux config on stdout
  printf 'SERIAL 0 115200\nDEFAULT cloudd\nPROMPT 0\nTIMEOUT 0\nLABEL cloudd\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND console=tty0 console=ttyS0%s\n' "$1"
}

build_disk() {  # $1 vmlinuz, $2 initrd.img -> $work/disk.qcow2
  local img=disk.img size_mib=64 start=2048  # partition at 1 MiB (sectors of 512 bytes)
  local offset=$((start * 512)) sectors=$((size_mib * 2048 - start))
  truncate -s "${size_mib}M" "$img"
  printf 'label: dos\nstart=%d, size=%d, type=6, bootable\n' "$start" "$sectors" | sfdisk -q "$img"
  mkfs.fat -F 16 -n CLOUDDBOOT -h "$start" --offset "$start" "$img" $((sectors / 2)) >/dev/null
  syslinux --offset "$offset" --install "$img"
  boot_cfg "" > syslinux.cfg
  cp "$1" vmlinuz.disk
  cp "$2" initrd.disk
  mcopy -o -i "$img@@$offset" syslinux.cfg ::/syslinux.cfg
  mcopy -o -i "$img@@$offset" vmlinuz.disk ::/vmlinuz
  mcopy -o -i "$img@@$offset" initrd.disk ::/initrd.img
  dd if="$mbr" of="$img" bs=440 count=1 conv=notrunc status=none
  qemu-img convert -f raw -O qcow2 "$img" disk.qcow2
}

# --- a bootable CD (an "installer" for VMs with a blank disk) ----------------------------
build_iso() {  # $1 vmlinuz, $2 initrd.img -> $work/boot.iso (isolinux, El Torito, no emulation)
  mkdir -p iso/isolinux
  cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 iso/isolinux/
  cp "$1" iso/vmlinuz
  cp "$2" iso/initrd.img
  boot_cfg " cloudd.boot=cd" > iso/isolinux/isolinux.cfg
  genisoimage -quiet -o boot.iso -V CLOUDDBOOT -J -r -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table iso
}

publish() {  # copy next to the target, then rename over it
  local f
  for f in "$@"; do cp "$f" "$out/.$f.new" && mv -f "$out/.$f.new" "$out/$f"; done
}
if same_recipe && have vmlinuz && have initrd.img; then
  build_disk "$out/vmlinuz" "$out/initrd.img"
  build_iso "$out/vmlinuz" "$out/initrd.img"
  publish disk.qcow2 boot.iso
else
  rm -f "$out/.recipe"
  build_initramfs
  build_disk vmlinuz initrd.img
  build_iso vmlinuz initrd.img
  publish vmlinuz initrd.img disk.qcow2 boot.iso
  echo "$recipe" > "$out/.recipe"
fi
echo "guest kernel, initramfs, disk.qcow2 and boot.iso in $out"
