#!/usr/bin/env bash
# The cluster measurements of BENCHMARKS.md: a local redis-server, NODES
# headcount nodes sharing it, then (1) `bench cluster` over the first three
# (join/leave propagation) and (2) PER sockets held on every node at once,
# with every node's /api/stats/cluster read while they are held, then
# (3) `bench presence` over the first three (3 × 3,000 members, diff
# propagation, memory per presence member) and (4) `bench webhooks` against
# three fresh nodes started with --webhook-url pointing at the bench's
# receiver (10,000 topics occupied and vacated over 60 s).
#
# Nodes run with the per-socket limits (SPEC §8.4) raised, so that (1) and
# (2) measure what they did before the limits existed; presence and webhooks
# stay within the default limits on their own.
#
#   scripts/bench-cluster.sh /tmp/bench-cluster   # BIN: cargo's release build unless set
set -euo pipefail
OUT=${1:-/tmp/headcount-bench-cluster}
. "$(cd "$(dirname "$0")" && pwd)/bench-common.sh"
BIN=${BIN:-$(release_bin)}
NODES=${NODES:-6}
PER=${PER:-16700}
REDIS_PORT=${REDIS_PORT:-16500}
BASE=${BASE:-21210}   # node i listens on BASE+i, below the ephemeral range
mkdir -p "$OUT"
export RUST_BACKTRACE=0
WH_PORT=${WH_PORT:-21300}   # the webhook receiver of (4)
WH_SECRET=bench-webhook-secret
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; }
trap cleanup EXIT
redis-server --port "$REDIS_PORT" --save "" --appendonly no --daemonize yes --logfile "$OUT/redis.log"
sleep 0.5
urls=()
for i in $(seq "$NODES"); do
  RUST_LOG=warn "$BIN" serve --bind 127.0.0.1:$((BASE + i)) --node "n$i@127.0.0.1" \
    --redis "redis://127.0.0.1:$REDIS_PORT" --redis-prefix "bench$$" \
    --allow-topic 'bench:*' --presence-topic 'bench:presence*' "${NO_LIMITS[@]}" \
    >"$OUT/node$i.out" 2>"$OUT/node$i.err" </dev/null &
  pids+=($!)
  urls+=("127.0.0.1:$((BASE + i))")
done
sleep 2
for r in 1 2 3; do
  "$BIN" bench cluster --url "${urls[0]},${urls[1]},${urls[2]}" --rounds 200 --json >"$OUT/cluster3-$r.json"
done
holds=()
for i in $(seq "$NODES"); do
  "$BIN" bench hold --url "${urls[$((i - 1))]}" --sockets "$PER" --hold 25 --workers 2 \
    --server-pid "${pids[$((i - 1))]}" --settle 0 --json >"$OUT/hold-node$i.json" &
  holds+=($!)
done
sleep 15
for u in "${urls[@]}"; do curl -s "http://$u/api/stats/cluster"; echo; done >"$OUT/cluster-stats-held.jsonl"
wait "${holds[@]}"
jq -c '{node, total_connections, socket_count, cluster_size, degraded}' "$OUT/cluster-stats-held.jsonl"
sleep 5
"$BIN" bench presence --url "${urls[0]},${urls[1]},${urls[2]}" --sockets 9000 --rate 50 \
  --duration 30 --server-pid "${pids[0]},${pids[1]},${pids[2]}" --settle 5 --json >"$OUT/presence3x3000.json"
# Fresh nodes for the webhooks (a cluster of their own: another Redis prefix).
whurls=()
for i in 1 2 3; do
  RUST_LOG=warn "$BIN" serve --bind 127.0.0.1:$((BASE + 10 + i)) --node "w$i@127.0.0.1" \
    --redis "redis://127.0.0.1:$REDIS_PORT" --redis-prefix "benchwh$$" --allow-topic 'bench:*' \
    --webhook-url "http://127.0.0.1:$WH_PORT/hook" --webhook-secret "$WH_SECRET" \
    --webhook-vacate-delay-ms 3000 >"$OUT/whnode$i.out" 2>"$OUT/whnode$i.err" </dev/null &
  pids+=($!)
  whurls+=("127.0.0.1:$((BASE + 10 + i))")
done
sleep 2
"$BIN" bench webhooks --url "${whurls[0]},${whurls[1]},${whurls[2]}" --topics 10000 --duration 60 \
  --hold 5 --webhook-secret "$WH_SECRET" --webhook-vacate-delay-ms 3000 \
  --receiver-bind "127.0.0.1:$WH_PORT" --json >"$OUT/webhooks10000.json"
