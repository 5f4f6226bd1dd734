#!/usr/bin/env bash
# Stops the Redis Cluster that redis-cluster-start.sh started from DIR.
#
# Usage: redis-cluster-stop.sh DIR [--purge]
#   Stops only the processes of the pid files DIR/*/redis.pid that really are
#   redis-server (never by name, never another Redis on the machine).
#   --purge also deletes DIR.
# Idempotent: a missing DIR, missing pid files or dead servers are fine.
set -uo pipefail

DIR=${1:?usage: $0 DIR [--purge]}
PURGE=${2:-}
[ -d "$DIR" ] || exit 0

pids=()
for f in "$DIR"/*/redis.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f" 2>/dev/null) || continue
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" 2>/dev/null && pids+=("$pid") # SIGTERM; nothing is saved
  fi
  rm -f "$f"
done
for pid in "${pids[@]}"; do
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
if [ "$PURGE" = "--purge" ]; then
  rm -rf "${DIR:?}"
fi
echo "stopped ${#pids[@]} redis server(s) from $DIR"
