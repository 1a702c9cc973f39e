#!/usr/bin/env bash
# Install what cloudd needs on Debian 12: Debian packages with apt-get, Python packages
# into .venv/ at the repo root. Idempotent: does nothing when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

# libvirt-dev + pkg-config + gcc build libvirt-python against Debian's libvirt;
# qemu + libvirt's qemu driver run guests (embedded libvirt: no daemon needs to run);
# busybox-static builds the tiny test guest's initramfs; fdisk (sfdisk), dosfstools (mkfs.fat),
# mtools, syslinux + syslinux-common (mbr.bin, ldlinux) and isolinux build its bootable disk.qcow2 and boot.iso without
# mounting anything (scripts/build-guest.sh); genisoimage makes NoCloud seed ISOs in the tests;
# chromium is the browser the web UI's Playwright tests drive (tests/ui)
DEBS=(python3 python3-venv python3-dev gcc pkg-config ca-certificates libvirt-dev
      qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-daemon-driver-qemu busybox-static
      fdisk dosfstools mtools syslinux syslinux-common isolinux genisoimage
      tgt qemu-block-extra nftables dnsmasq-base iproute2 chromium
      systemd util-linux   # systemd-analyze verify / systemd-tmpfiles and unshare in the tests
      novnc)  # the web console's VNC client, served from /usr/share/novnc (cloudd/web/console.py)

missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: need root to install Debian packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
elif ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  apt-get update -q  # build-guest.sh downloads the kernel package: the lists must be there
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  "$PY" -m venv .venv
fi

stamp=.venv/.cloudd-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
