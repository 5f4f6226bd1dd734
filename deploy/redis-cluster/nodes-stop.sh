#!/usr/bin/env bash
# Stops the headcount nodes that nodes-start.sh started from DIR: SIGTERM
# (a graceful shutdown: each leaves the cluster at once), then SIGKILL after
# 10 s. Only the pids of DIR/headcount-*.pid that really are headcount.
set -uo pipefail

DIR=${1:?usage: $0 DIR}
[ -d "$DIR" ] || exit 0
pids=()
for f in "$DIR"/headcount-*.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f" 2>/dev/null) || continue
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    grep -q headcount "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" 2>/dev/null && pids+=("$pid")
  fi
  rm -f "$f"
done
for pid in "${pids[@]}"; do
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
echo "stopped ${#pids[@]} headcount node(s) from $DIR"
