#!/usr/bin/env bash
# Starts a local Redis Cluster of 3 masters and 3 replicas for trying
# headcount, and waits until it is healthy: every server says
# cluster_state:ok, knows all 6, none failing, and every replica has finished
# its first sync (a replica that never synced refuses to fail over).
#
# Usage: redis-cluster-start.sh DIR [PORT1 .. PORT6]
#   DIR    one sub-directory per port (redis.conf, nodes.conf, redis.pid,
#          redis.log); created if missing.
#   PORTs  six ports, default 7000..7005. Redis also listens on PORT+10000
#          (the cluster bus), so keep PORT+10000 free as well.
# Env:
#   NODE_TIMEOUT_MS  cluster-node-timeout (default 2000): a killed master is
#                    replaced after about this plus 1-2 s.
#   WAIT_SECS        how long to wait for the cluster (default 30).
#   REDIS_SERVER, REDIS_CLI  the binaries (default: from PATH; Redis >= 7).
#
# Idempotent: a healthy cluster started from DIR is left alone. Otherwise the
# servers it started before from DIR (by pid file) are stopped, their state
# wiped, and a fresh cluster created. A port held by any other process is
# refused. Stop with redis-cluster-stop.sh DIR.
#
# For trying things only: no persistence, no password, loopback.
set -euo pipefail

DIR=${1:?usage: $0 DIR [PORT1 .. PORT6]}
shift
if [ "$#" -eq 0 ]; then
  set -- 7000 7001 7002 7003 7004 7005
fi
if [ "$#" -ne 6 ]; then
  echo "need exactly 6 ports (3 masters + 3 replicas), got $#" >&2
  exit 2
fi
PORTS=("$@")
NODE_TIMEOUT_MS=${NODE_TIMEOUT_MS:-2000}
WAIT_SECS=${WAIT_SECS:-30}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
HOST=127.0.0.1

for tool in "$REDIS_SERVER" "$REDIS_CLI"; do
  command -v "$tool" >/dev/null || {
    echo "$tool not found (Debian/Ubuntu: apt-get install redis-server redis-tools)" >&2
    exit 1
  }
done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

cli() { # cli PORT args...: a short timeout, so a dead port fails fast
  timeout 5 "$REDIS_CLI" -h "$HOST" -p "$1" "${@:2}" 2>/dev/null
}

pid_of() { # the live pid recorded for PORT under DIR
  local f="$DIR/$1/redis.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

healthy() {
  local p info nodes
  for p in "${PORTS[@]}"; do
    pid_of "$p" >/dev/null || return 1
    info=$(cli "$p" cluster info) || return 1
    grep -q '^cluster_state:ok' <<<"$info" || return 1
    grep -q '^cluster_known_nodes:6' <<<"$info" || return 1
    nodes=$(cli "$p" cluster nodes) || return 1
    if grep -Eq 'fail|handshake|noaddr|disconnected' <<<"$nodes"; then return 1; fi
  done
  [ "$(cli "${PORTS[0]}" cluster nodes | grep -c master)" -eq 3 ] || return 1
  [ "$(cli "${PORTS[0]}" cluster nodes | grep -c slave)" -eq 3 ] || return 1
  for p in "${PORTS[@]}"; do
    info=$(cli "$p" info replication) || return 1
    if grep -q '^role:slave' <<<"$info"; then
      grep -q '^master_link_status:up' <<<"$info" || return 1
      grep -q '^master_sync_in_progress:0' <<<"$info" || return 1
    fi
  done
}

if healthy; then
  echo "redis cluster already healthy on ports ${PORTS[*]} (dir $DIR)"
  exit 0
fi

for p in "${PORTS[@]}"; do
  if pid=$(pid_of "$p"); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
done
for p in "${PORTS[@]}"; do
  if cli "$p" ping >/dev/null; then
    echo "port $p is in use by a process not started from $DIR; refusing" >&2
    exit 1
  fi
  rm -rf "${DIR:?}/$p"
  mkdir -p "$DIR/$p"
done

for p in "${PORTS[@]}"; do
  # One config file per server, so that a server killed to try a failover
  # can be started again alone: redis-server DIR/PORT/redis.conf
  cat >"$DIR/$p/redis.conf" <<CONF
port $p
bind $HOST
dir $DIR/$p
daemonize yes
pidfile $DIR/$p/redis.pid
logfile $DIR/$p/redis.log
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout $NODE_TIMEOUT_MS
# A replica may always take over, however long it was cut off.
cluster-replica-validity-factor 0
# Replicas sync at once, not after 5 s.
repl-diskless-sync-delay 0
# headcount's figures need no persistence.
save ""
appendonly no
CONF
  "$REDIS_SERVER" "$DIR/$p/redis.conf"
done

for p in "${PORTS[@]}"; do
  ok=
  for _ in $(seq 1 100); do
    if [ "$(cli "$p" ping)" = PONG ]; then ok=1; break; fi
    sleep 0.1
  done
  if [ -z "$ok" ]; then
    echo "redis-server on port $p did not start; its log:" >&2
    tail -n 20 "$DIR/$p/redis.log" >&2 || true
    exit 1
  fi
done

addrs=()
for p in "${PORTS[@]}"; do addrs+=("$HOST:$p"); done
# The first 3 become masters, the last 3 replicas (redis-cli pairs them).
timeout 60 "$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
  >"$DIR/create.log" 2>&1 || { cat "$DIR/create.log" >&2; exit 1; }

deadline=$(( $(date +%s) + WAIT_SECS ))
until healthy; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "cluster not healthy after ${WAIT_SECS}s" >&2
    for p in "${PORTS[@]}"; do echo "--- $p"; cli "$p" cluster info | head -3 || true; done >&2
    exit 1
  fi
  sleep 0.2
done
echo "redis cluster ok on ports ${PORTS[*]} (dir $DIR, node-timeout ${NODE_TIMEOUT_MS} ms)"
