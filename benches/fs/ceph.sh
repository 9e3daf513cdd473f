#!/usr/bin/env bash
# A minimal Ceph (Pacific) cluster on loopback for the benches.
#
#   ceph.sh up STATE [MOUNT]   1 mon, 1 mgr, 3 bluestore OSDs (block files
#                              under STATE), pools size 3 / min_size 2 with
#                              `osd crush chooseleaf type = 0` (one host);
#                              with MOUNT also 1 MDS + CephFS mounted there
#                              with ceph-fuse; without it a pool `bench` for
#                              `rados bench`
#   ceph.sh conf STATE         prints the ceph.conf path (for rados/ceph -c)
#   ceph.sh down STATE         unmount, kill every daemon started here by the
#                              PIDs recorded in STATE, remove STATE; safe to
#                              run twice
#
# Everything (config, keyrings, mon/osd/mds data, admin sockets, logs) lives
# under STATE; nothing is read from or written to /etc/ceph or /var/lib/ceph.
# The mon listens on a loopback address of its own (127.0.x.y, msgr2 only);
# OSDs and the MDS bind to the same address (ports 6800-7300).
set -euo pipefail
cmd=${1:?usage: ceph.sh up STATE [MOUNT] | conf STATE | down STATE}
state=${2:?usage: ceph.sh up STATE [MOUNT] | conf STATE | down STATE}
conf=$state/ceph.conf

log() { echo "ceph.sh: $*" >&2; }
c() { timeout 60 ceph -c "$conf" "$@"; }

down() {
  [ -d "$state" ] || return 0
  local mnt
  mnt=$(cat "$state/mountpoint" 2>/dev/null || true)
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  fi
  # Reverse start order: client, mds, osds, mgr, mon.
  local pids=()
  for f in fuse mds osd.2 osd.1 osd.0 mgr mon; do
    [ -f "$state/pid.$f" ] && pids+=("$(cat "$state/pid.$f")")
  done
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then umount -l "$mnt" 2>/dev/null || true; fi
  log "daemons stopped; removing $state"
  rm -rf "$state"
  log "removed $state"
}

# start NAME CMD...: runs a daemon in the foreground (-f) in its own
# session, records its PID.
start() {
  local name=$1; shift
  setsid "$@" >"$state/log/$name.out" 2>&1 </dev/null &
  echo $! >"$state/pid.$name"
}

wait_for() { # seconds what command...
  local secs=$1 what=$2; shift 2
  local i
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "timed out after ${secs}s waiting for $what; logs in $state/log"
  return 1
}

up() {
  local mnt=${3:-}
  for b in ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool; do
    command -v "$b" >/dev/null || { log "$b not installed (Debian ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse)"; exit 3; }
  done
  local ip=${FSB_CEPH_IP:-127.0.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 2))}
  local port=3300
  local fsid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  mkdir -p "$state"/{log,run,mon,mgr,mds,crash}
  [ -n "$mnt" ] && echo "$mnt" >"$state/mountpoint"
  cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = [v2:$ip:$port]
public addr = $ip
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $state/\$name.keyring
run dir = $state/run
admin socket = $state/run/\$cluster-\$name.asok
log file = $state/log/\$name.log
crash dir = $state/crash
mon data = $state/mon/\$id
mgr data = $state/mgr/\$id
mds data = $state/mds/\$id
osd data = $state/osd\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = ${FSB_CEPH_OSD_GB:-6}G
bluestore block db create = false
bluestore block wal create = false
osd memory target = 1073741824
bluestore cache autotune = false
bluestore cache size = 268435456
osd crush chooseleaf type = 0
osd pool default size = 3
osd pool default min size = 2
osd pool default pg autoscale mode = off
osd pool default pg num = 32
osd pool default pgp num = 32
mon allow pool delete = true
mon allow pool size one = false
mon warn on pool no redundancy = false
auth allow insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon max pg per osd = 1000
osd max object name len = 256
osd max object namespace len = 64
mgr initial modules =
mon osd full ratio = .97
mon osd backfillfull ratio = .95
mon osd nearfull ratio = .92
mon data avail warn = 5
[client]
# The CLI, rados and ceph-fuse all run as client.admin: one socket each.
admin socket = $state/run/\$cluster-\$name.\$pid.asok
CONF
  # Keys: mon., client.admin (the CLI, rados bench and ceph-fuse).
  ceph-authtool --create-keyring "$state/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$state/client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$state/mon.keyring" --import-keyring "$state/client.admin.keyring" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:$ip:$port]" "$state/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$state/monmap" --keyring "$state/mon.keyring" 2>"$state/log/mon-mkfs.err"
  cp "$state/mon.keyring" "$state/mon/a/keyring" 2>/dev/null || true
  start mon ceph-mon -c "$conf" -f -i a
  wait_for 60 "the monitor" c -s
  log "mon up on $ip:$port"

  c auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$state/mgr.x.keyring"
  mkdir -p "$state/mgr/x"
  start mgr ceph-mgr -c "$conf" -f -i x

  for i in 0 1 2; do
    local uuid id
    uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(c osd new "$uuid")
    [ "$id" = "$i" ] || { log "expected osd id $i, got $id"; exit 1; }
    mkdir -p "$state/osd$i"
    c auth get-or-create "osd.$i" mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *' \
      -o "$state/osd.$i.keyring"
    cp "$state/osd.$i.keyring" "$state/osd$i/keyring"
    ceph-osd -c "$conf" -i "$i" --mkfs --osd-uuid "$uuid" >"$state/log/osd$i-mkfs.out" 2>&1 ||
      { log "ceph-osd --mkfs $i failed: $(tail -3 "$state/log/osd$i-mkfs.out")"; exit 1; }
    start "osd.$i" ceph-osd -c "$conf" -f -i "$i"
  done
  wait_for 120 "3 OSDs up" bash -c "ceph -c '$conf' osd stat -f json | grep -q '\"num_up_osds\":3'"
  log "3 OSDs up"

  if [ -z "$mnt" ]; then
    c osd pool create bench 32 32 replicated >&2
    c osd pool application enable bench rados >&2
    wait_for 120 "pool bench active+clean" bash -c \
      "ceph -c '$conf' pg stat | grep -qE '^[0-9]+ pgs: [0-9]+ active\+clean;'"
    log "pool bench (size 3) ready; conf $conf"
    return 0
  fi

  command -v ceph-mds >/dev/null || { log "ceph-mds not installed"; exit 3; }
  command -v ceph-fuse >/dev/null || { log "ceph-fuse not installed"; exit 3; }
  c osd pool create cephfs_metadata 16 16 replicated >&2
  c osd pool create cephfs_data 32 32 replicated >&2
  c fs new cephfs cephfs_metadata cephfs_data >&2
  mkdir -p "$state/mds/a"
  c auth get-or-create mds.a mon 'allow profile mds' osd 'allow rwx' mds 'allow' mgr 'allow profile mds' \
    -o "$state/mds.a.keyring"
  start mds ceph-mds -c "$conf" -f -i a
  wait_for 120 "the MDS active" bash -c "ceph -c '$conf' fs status cephfs 2>/dev/null | grep -q active || ceph -c '$conf' mds stat | grep -q 'up:active'"
  wait_for 120 "all PGs active+clean" bash -c \
    "ceph -c '$conf' pg stat | grep -qE '^[0-9]+ pgs: [0-9]+ active\+clean;'"
  mkdir -p "$mnt"
  start fuse ceph-fuse -c "$conf" -f "$mnt"
  wait_for 60 "the ceph-fuse mount" mountpoint -q "$mnt"
  wait_for 60 "a writable CephFS" bash -c "touch '$mnt/.ready' && rm -f '$mnt/.ready'"
  log "CephFS (size 3, 3 bluestore OSDs on files) mounted on $mnt"
}

case $cmd in
up)
  # Any failure (set -e) tears down what was started so far.
  trap 'rc=$?; [ $rc -eq 0 ] || down; exit $rc' EXIT
  up "$@"
  ;;
conf) echo "$conf" ;;
down) down ;;
*) echo "usage: ceph.sh up STATE [MOUNT] | conf STATE | down STATE" >&2; exit 2 ;;
esac
