#!/usr/bin/env bash
# Bring up a working 3-node cloudd cluster on this machine (loopback addresses) and
# print where to log in. Idempotent: running it again restarts stopped nodes only.
#   ./quickstart.sh          install, start, print the login
#   ./quickstart.sh stop     stop the local nodes
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
RUN=$ROOT/run
NODES=3
# Each node's hypervisor: a libvirt of its own (embedded, no daemon) running qemu in
# software (TCG); where qemu is missing, libvirt's test driver simulates one.
if command -v qemu-system-x86_64 >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ]; then
  COMPUTE_URI=embedded
  HYPERVISORS="qemu (software emulation) under an embedded libvirt per node"
else
  COMPUTE_URI=test:///default
  HYPERVISORS="libvirt's TEST driver: qemu is missing, so VMs are simulated and no guest really runs"
fi
# Each node exports volumes over iSCSI with a tgtd of its own (tgt from Debian).
iscsi_args() { echo "--iscsi private-tgt --iscsi-portal 127.0.0.1:$((3260 + $1))"; }
# Each node's VM networks: bridges named q<i>b…, VXLAN on its own UDP port over loopback.
network_args() { echo "--network linux --net-prefix q$1 --underlay 127.0.0.1:$((4789 + $1))"; }
vnc_ports() { echo "$((5800 + 100 * $1))-$((5899 + 100 * $1))"; }
api_addr() { echo "127.0.0.1:$((8400 + $1))"; }
raft_addr() { echo "127.0.0.1:$((8500 + $1))"; }

running() {  # node dir -> 0 when its daemon runs
  local pid
  pid=$(cat "$1/cloudd.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null
}

if [ "${1:-}" = stop ]; then
  for i in $(seq 1 $NODES); do
    d=$RUN/node$i
    if running "$d"; then kill "$(cat "$d/cloudd.pid")"; fi
  done
  for i in $(seq 1 $NODES); do  # wait until each has exited, so a restart right after works
    d=$RUN/node$i
    for _ in $(seq 1 100); do running "$d" || break; sleep 0.1; done
    if running "$d"; then echo "node$i did not stop" >&2; exit 1; fi
    # guests of an embedded libvirt outlive cloudd: stop them with their node
    for pid_file in "$d"/libvirt/run/qemu/cloudd-*.pid; do
      [ -e "$pid_file" ] || continue
      kill "$(cat "$pid_file")" 2>/dev/null || true
    done
    # and their networks: bridges, VXLAN devices, taps, nftables table, dnsmasq
    "$ROOT/.venv/bin/cloudd" network-cleanup --data-dir "$d" > /dev/null || echo "node$i: network cleanup failed" >&2
    echo "node$i stopped"
  done
  exit 0
fi

bash scripts/install.sh
CLOUDD=$ROOT/.venv/bin/cloudd
CLOUDCTL=$ROOT/.venv/bin/cloudctl
mkdir -p "$RUN"

start() {  # i
  local d=$RUN/node$1
  if ! running "$d"; then
    setsid "$CLOUDD" serve --data-dir "$d" >>"$RUN/node$1.log" 2>&1 < /dev/null &
  fi
}

wait_healthy() {  # i
  for _ in $(seq 1 100); do
    if "$ROOT/.venv/bin/python" - "$(api_addr "$1")" <<'PY' 2>/dev/null; then return 0; fi
import sys, httpx
sys.exit(0 if httpx.get(f"http://{sys.argv[1]}/healthz", timeout=1).status_code == 200 else 1)
PY
    sleep 0.2
  done
  echo "node$1 did not become healthy; see $RUN/node$1.log" >&2
  return 1
}

if [ ! -f "$RUN/node1/node.json" ]; then
  "$CLOUDD" init --data-dir "$RUN/node1" --name node1 --api-addr "$(api_addr 1)" --raft-addr "$(raft_addr 1)" \
    --cluster-name quickstart --password-file "$RUN/admin-password" --compute-uri "$COMPUTE_URI" --vnc-ports "$(vnc_ports 1)" \
    $(iscsi_args 1) $(network_args 1) > "$RUN/init.txt"
fi
# restart every node that exists first: a lone restarted node has no quorum
for i in $(seq 1 $NODES); do
  if [ -f "$RUN/node$i/node.json" ]; then start "$i"; fi
done
wait_healthy 1
for i in $(seq 2 $NODES); do
  if [ ! -f "$RUN/node$i/node.json" ]; then
    token=$("$CLOUDD" token --data-dir "$RUN/node1")
    "$CLOUDD" join "$(api_addr 1)" --token "$token" --data-dir "$RUN/node$i" --name "node$i" \
      --api-addr "$(api_addr "$i")" --raft-addr "$(raft_addr "$i")" --compute-uri "$COMPUTE_URI" --vnc-ports "$(vnc_ports "$i")" \
      $(iscsi_args "$i") $(network_args "$i") > /dev/null
    start "$i"
  fi
done
for i in $(seq 1 $NODES); do wait_healthy "$i"; done

password=$(cat "$RUN/admin-password")
endpoints=()
for i in $(seq 1 $NODES); do endpoints+=(--endpoint "http://$(api_addr "$i")"); done
CLOUDCTL_PASSWORD=$password "$CLOUDCTL" "${endpoints[@]}" login --username admin > /dev/null
# a few sizes to start with (already there on a re-run: ignored)
for f in "tiny 1 128 1" "small 1 512 5" "medium 2 2048 20"; do
  set -- $f
  "$CLOUDCTL" flavor create "$1" --vcpus "$2" --ram "$3" --disk "$4" > /dev/null 2>&1 || true
done
# the default image: a tiny bootable disk (syslinux + Debian kernel + busybox) built from
# Debian packages; it reads its cloud-init seed and shows a login prompt on the VNC console
bash scripts/build-guest.sh "$RUN/guest" > /dev/null
"$CLOUDCTL" image register tiny-disk --path "$RUN/guest/disk.qcow2" --format qcow2 --size 0.0625 --os busybox > /dev/null 2>&1 || true
"$CLOUDCTL" image set-default tiny-disk > /dev/null
# volumes: a file pool on every node (each node's tgtd exports them to the VM's node)
for i in $(seq 1 $NODES); do
  "$CLOUDCTL" storage-pool create "local$i" --node "node$i" --backend file --path "$RUN/node$i/volumes" > /dev/null 2>&1 || true
done
# a network for the VMs: VXLAN between the nodes over loopback, DHCP from 10.77.0.254
"$CLOUDCTL" network create lan --subnet 10.77.0.0/24 --dns 10.77.0.1 > /dev/null 2>&1 || true
"$CLOUDCTL" cluster status

cat <<TXT

cloudd is running: $NODES nodes on this machine.
  Web UI:          http://$(api_addr 1)/   (any node: http://$(api_addr 2)/, http://$(api_addr 3)/)
  API (any node):  http://$(api_addr 1)/api/v1   http://$(api_addr 2)/api/v1   http://$(api_addr 3)/api/v1
  Log in as:       admin / $password   (also in $RUN/admin-password)
  CLI:             $CLOUDCTL node list     (already logged in)
                   $CLOUDCTL vm create web1 --flavor tiny --network lan --wait     (boots tiny-disk, the default image)
                   $CLOUDCTL volume create data1 --size 1 --wait     (an iSCSI volume; see README: volumes)
  Logs:            $RUN/node*.log        Stop: ./quickstart.sh stop
  Hypervisors:     $HYPERVISORS
TXT
