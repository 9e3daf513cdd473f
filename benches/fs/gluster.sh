#!/usr/bin/env bash
# GlusterFS replica-3 volume on this machine for benches/fs-bench.
#
#   gluster.sh up STATE MOUNT   start a private glusterd, create and start a
#                               replica-3 volume (3 bricks under STATE) and
#                               mount it on MOUNT with the glusterfs FUSE client
#   gluster.sh down STATE       unmount, stop/delete the volume, kill every
#                               daemon started here (by the PIDs recorded in
#                               STATE), remove STATE; safe to run twice
#
# Everything lives under STATE: glusterd's working and run directories, its
# CLI socket and the bricks. glusterd listens on 24007 (bricks always ask
# that port) but only on a loopback address of its own, 127.0.x.y from
# $FSB_GLUSTER_IP (default: random), so it does not collide with another
# glusterd on 0.0.0.0 — unless one is already bound there, which `up`
# reports. GlusterFS refuses 127.0.0.1 as a brick host but accepts other
# 127/8 addresses; three bricks on one host need `force`.
set -euo pipefail
cmd=${1:?usage: gluster.sh up STATE MOUNT | down STATE}
state=${2:?usage: gluster.sh up STATE MOUNT | down STATE}
vol=fsbench

log() { echo "gluster.sh: $*" >&2; }

gcli() {
  timeout 60 gluster --glusterd-sock="$state/run/glusterd.socket" \
    --log-file="$state/log/cli.log" --mode=script "$@"
}

down() {
  [ -d "$state" ] || return 0
  local mnt
  mnt=$(cat "$state/mountpoint" 2>/dev/null || true)
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  fi
  if [ -S "$state/run/glusterd.socket" ] && [ -f "$state/glusterd.pid" ] &&
    kill -0 "$(cat "$state/glusterd.pid")" 2>/dev/null; then
    gcli volume stop "$vol" force >/dev/null 2>&1 || true
    gcli volume delete "$vol" >/dev/null 2>&1 || true
  fi
  # Every PID recorded: mount client, glusterd, bricks and self-heal daemon
  # (glusterd writes the last two under its run directory).
  local pids=()
  for f in "$state/mount.pid" "$state/glusterd.pid"; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  while IFS= read -r f; do pids+=("$(cat "$f")"); done \
    < <(find "$state/run" -name '*.pid' 2>/dev/null)
  for p in "${pids[@]}"; do
    [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then umount -l "$mnt" 2>/dev/null || true; fi
  # Brick and self-heal logs go to /var/log/glusterfs named after the brick
  # path, which contains STATE: remove ours only.
  local tag
  tag=$(echo "${state#/}" | tr / -)
  rm -f /var/log/glusterfs/bricks/"$tag"-* 2>/dev/null || true
  log "daemons stopped; removing $state"
  rm -rf "$state"
  log "removed $state"
}

up() {
  local mnt=${3:?usage: gluster.sh up STATE MOUNT}
  command -v glusterd >/dev/null || { log "glusterd not installed (Debian glusterfs-server)"; exit 3; }
  local ip=${FSB_GLUSTER_IP:-127.0.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 2))}
  if ss -Hltn "( sport = :24007 )" | grep -qE '(\*|0\.0\.0\.0|\[::\]):24007'; then
    log "another glusterd listens on *:24007; stop it or run this bench elsewhere"
    exit 3
  fi
  mkdir -p "$state"/{lib,run,log,bricks/b1,bricks/b2,bricks/b3}
  echo "$mnt" >"$state/mountpoint"
  cat >"$state/glusterd.vol" <<VOL
volume management
    type mgmt/glusterd
    option working-directory $state/lib
    option run-directory $state/run
    option glusterd-sockfile $state/run/glusterd.socket
    option transport-type socket
    option transport.socket.listen-port 24007
    option transport.socket.bind-address $ip
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option base-port 49700
    option max-port 49899
end-volume
VOL
  setsid glusterd -N -f "$state/glusterd.vol" -l "$state/log/glusterd.log" \
    >"$state/log/glusterd.out" 2>&1 </dev/null &
  echo $! >"$state/glusterd.pid"
  for _ in $(seq 100); do [ -S "$state/run/glusterd.socket" ] && break; sleep 0.1; done
  [ -S "$state/run/glusterd.socket" ] || { log "glusterd did not start; see $state/log/glusterd.log"; exit 1; }
  sleep 1
  gcli volume create "$vol" replica 3 \
    "$ip:$state/bricks/b1" "$ip:$state/bricks/b2" "$ip:$state/bricks/b3" force >&2
  gcli volume start "$vol" >&2
  mkdir -p "$mnt"
  setsid glusterfs -N --volfile-server="$ip" --volfile-id="$vol" \
    --log-file="$state/log/mount.log" "$mnt" >"$state/log/mount.out" 2>&1 </dev/null &
  echo $! >"$state/mount.pid"
  for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
  mountpoint -q "$mnt" || { log "the glusterfs client did not mount; see $state/log/mount.log"; exit 1; }
  # A mount appears before the client is connected to all three bricks.
  for _ in $(seq 100); do stat -f "$mnt" >/dev/null 2>&1 && touch "$mnt/.ready" 2>/dev/null && break; sleep 0.1; done
  rm -f "$mnt/.ready"
  log "volume $vol (replica 3, bricks on $ip) mounted on $mnt"
}

case $cmd in
up)
  # Any failure (set -e) tears down what was started so far.
  trap 'rc=$?; [ $rc -eq 0 ] || down; exit $rc' EXIT
  up "$@"
  ;;
down) down ;;
*) echo "usage: gluster.sh up STATE MOUNT | down STATE" >&2; exit 2 ;;
esac
