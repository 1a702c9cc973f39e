#!/usr/bin/env bash
# Install what cloudd needs on Debian 12: Debian packages with apt-get, Python packages
# into .venv/ at the repo root. Idempotent: does nothing when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

# libvirt-dev + pkg-config + gcc build libvirt-python against Debian's libvirt
DEBS=(python3 python3-venv python3-dev gcc pkg-config ca-certificates libvirt-dev)

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
