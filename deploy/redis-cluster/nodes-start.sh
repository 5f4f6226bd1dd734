#!/usr/bin/env bash
# Starts 3 headcount nodes (a, b, c on 127.0.0.1:4001..4003) on the local
# Redis Cluster of redis-cluster-start.sh, and waits until each sees all
# three.
#
# Usage: nodes-start.sh DIR [EXTRA SERVE FLAGS...]
#   DIR  where the pid files and logs go (DIR/headcount-a.log, …).
# Env:
#   HEADCOUNT    the binary (default: headcount on PATH, else
#                target/release/headcount or target/debug/headcount)
#   REDIS_PORTS  the cluster's ports (default "7000 7001 7002 7003 7004 7005");
#                each node gets three of them as its seed list
#   RUST_LOG     default info
# Stop with nodes-stop.sh DIR.
set -euo pipefail

DIR=${1:?usage: $0 DIR [EXTRA SERVE FLAGS...]}
shift
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${HEADCOUNT:-}" ]; then
  for candidate in "$(command -v headcount || true)" "$ROOT/target/release/headcount" "$ROOT/target/debug/headcount"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then HEADCOUNT=$candidate; break; fi
  done
fi
[ -x "${HEADCOUNT:-}" ] || { echo "no headcount binary: cargo build --release, or set HEADCOUNT" >&2; exit 1; }
read -r -a ports <<<"${REDIS_PORTS:-7000 7001 7002 7003 7004 7005}"
[ "${#ports[@]}" -ge 3 ] || { echo "REDIS_PORTS needs at least 3 ports" >&2; exit 1; }

i=0
for name in a b c; do
  port=$((4001 + i))
  # A seed list: any server of the cluster will do, the client finds the
  # rest. Three, so that losing one (or two) does not matter at start.
  seeds=""
  for k in 0 1 2; do
    seeds+="${seeds:+,}redis://127.0.0.1:${ports[$(( (i + k) % ${#ports[@]} ))]}"
  done
  pidfile="$DIR/headcount-$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "node $name already runs (pid $(cat "$pidfile"))"
  else
    RUST_LOG=${RUST_LOG:-info} "$HEADCOUNT" serve \
      --bind "127.0.0.1:$port" --node "$name" --redis "$seeds" \
      --allow-topic 'rooms:*' "$@" \
      >"$DIR/headcount-$name.log" 2>&1 &
    echo $! >"$pidfile"
    echo "node $name: http://127.0.0.1:$port  --redis $seeds  (log $DIR/headcount-$name.log)"
  fi
  i=$((i + 1))
done

deadline=$(( $(date +%s) + 20 ))
for port in 4001 4002 4003; do
  until "$HEADCOUNT" stats --url "http://127.0.0.1:$port" --cluster --json 2>/dev/null |
    grep -q '"cluster_size": *3'; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "node on $port does not see 3 nodes; its log:" >&2
      tail -n 20 "$DIR"/headcount-*.log >&2
      exit 1
    fi
    sleep 0.2
  done
done
echo "3 nodes up. Watch them: $HEADCOUNT stats --url http://127.0.0.1:4001 --cluster"
