#!/usr/bin/env bash
# The measurements of BENCHMARKS.md "Issue 10" and "Issue 11", on loopback:
# a redis-server of its own on a free port, headcount nodes on free ports,
# every bench bounded by --timeout and every node stopped on exit.
#
#   scripts/bench-wave-a.sh OUT [ROUNDS]   # BIN: cargo's release build unless set
#   PARTS="occ query redis mem token tokenrate flood" picks parts (default: all)
#
# Issue 10 (6 nodes, one Redis, per-socket limits raised as in bench-cluster.sh):
#   occ    bench occupancy: 15,000 watchers on 10,000 topics over 6 nodes,
#          1,000 joins+leaves/s over the cluster for 30 s; push latency from
#          the change's reply to the first push on another node
#   query  bench query on node 1 while nodes 2..6 each hold the same 1,000
#          topics (6 nodes × 1,000 topics): get_local_stats / get_cluster_stats
#          in full and with limit 10, get_occupancy of 10 topics, side by side
#          in each round
#   redis  bench occupancy, 6,000 watchers on 1,000 topics, churn 10/s for
#          20 s, alternately without stats queries and with 5,000
#          get_cluster_stats/s (limit 10) on node 1: Redis INFO commandstats
#          and node 1's own headcount_redis_commands_total over equal windows
#   mem    fresh 6 nodes; node 1 holds nothing and observes; nodes 2..6 each
#          hold 100,000 topics (1,000 sockets × 100) — the same 100,000 names
#          on every node ("shared"), then on fresh nodes 100,000 names of
#          their own ("distinct"); node 1's RSS before and once its cluster
#          stats show all 500,000 memberships: bytes per (node, topic) entry
# Issue 11 (one node each, no Redis):
#   token  ROUNDS × (fresh node without auth, fresh node with --auth-secret),
#          limits raised: bench hold 18,000 sockets (an HS256 token per
#          socket on the second); RSS per socket, connect+join rate
#   tokenrate  the same two kinds of node, standing: PAIRS alternating pairs
#          of bench hold 10,000 sockets, for the rate ratio within each pair
#   flood  a node with the DEFAULT per-socket limits, then one with them
#          raised: PAIRS alternating pairs of bench hold 5,000 sockets at
#          1,000/s without and with --flood-joins 10000 (one socket sending
#          10,000 joins/s meanwhile); join p99 of the 5,000 in each
set -euo pipefail
OUT=${1:-/tmp/headcount-bench-wave-a}
ROUNDS=${2:-3}
PAIRS=${PAIRS:-6}   # tokenrate and flood: alternating pairs on one node
PARTS=${PARTS:-occ query redis mem token tokenrate flood}
BIN=${BIN:-$(cargo metadata --format-version 1 --no-deps |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)/release/headcount}
mkdir -p "$OUT"
export RUST_BACKTRACE=0
NO_LIMITS=(--max-messages-per-second 1000000 --max-messages-burst 1000000
  --max-joins-per-second 1000000 --max-joins-burst 1000000)
SECRET=bench-wave-a-secret

# A free loopback TCP port (the kernel picks one; nothing holds it after).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()     # every process started here, stopped on exit by its own id
REDIS_PORT=$(free_port)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
has() { [[ " $PARTS " == *" $1 "* ]]; }
log() { echo "[$(date +%T)] $*" >&2; }

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --daemonize yes --logfile "$OUT/redis.log"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS="redis://127.0.0.1:$REDIS_PORT"

# start_node NAME ARGS... → appends to urls[] and npids[]
start_node() {
  local name=$1; shift
  local port; port=$(free_port)
  RUST_LOG=warn "$BIN" serve --bind 127.0.0.1:$port --node "$name@127.0.0.1" \
    --allow-topic 'bench:*' "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" </dev/null &
  pids+=($!); npids+=($!); urls+=("127.0.0.1:$port")
  for _ in $(seq 100); do grep -q listening "$OUT/$name.out" 2>/dev/null && return; sleep 0.1; done
  echo "node $name did not start" >&2; exit 1
}
stop_nodes() {
  for p in "${npids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  npids=(); urls=()
}
# cluster N PREFIX: N fresh nodes sharing the Redis under PREFIX.
cluster() {
  local n=$1 prefix=$2
  npids=(); urls=()
  for i in $(seq "$n"); do
    start_node "$prefix-n$i" --redis "$REDIS" --redis-prefix "$prefix" "${NO_LIMITS[@]}"
  done
  sleep 2
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
bench() { "$BIN" bench "$@" --json; }
join_urls() { local IFS=,; echo "$*"; }

# ---- Issue 10 ---------------------------------------------------------------
if has occ || has query || has redis; then
  cluster 6 "wa$$"
  ALL=$(join_urls "${urls[@]}")
  if has occ; then
    for r in $(seq "$ROUNDS"); do
      log "occupancy round $r"
      bench occupancy --url "$ALL" --sockets 15000 --topics 10000 --rate 1000 --duration 30 \
        --redis "$REDIS" --timeout 300 >"$OUT/occ10k-$r.json"
      sleep 3
    done
  fi
  if has query; then
    # Nodes 2..6 hold bench:0..999 (10 sockets × 100 topics each) for the
    # whole part; node 1's topics are the query scenario's own (the same names).
    holds=()
    for i in 2 3 4 5 6; do
      "$BIN" bench hold --url "${urls[$((i - 1))]}" --sockets 10 --topics 1000 \
        --topics-per-socket 100 --hold 1800 --workers 1 --settle 0 --timeout 1900 \
        --json >"$OUT/query-bg-hold-n$i.json" 2>/dev/null &
      pids+=($!); holds+=($!)
    done
    sleep 5
    curl -s "http://${urls[0]}/api/stats/cluster?limit=1" | jq -c '{total_connections, cluster_size, topics_omitted}' >"$OUT/query-cluster-before.json"
    Q=(--url "${urls[0]}" --topics 1000 --topics-per-socket 100 --server-pid "${npids[0]}" --timeout 120)
    for r in $(seq "$ROUNDS"); do
      log "query round $r"
      bench query "${Q[@]}" --event local --duration 5 >"$OUT/query-local-full-$r.json"
      bench query "${Q[@]}" --event cluster --duration 5 >"$OUT/query-cluster-full-$r.json"
      bench query "${Q[@]}" --event local --limit 10 --askers 4 --duration 5 >"$OUT/query-local-l10-$r.json"
      bench query "${Q[@]}" --event cluster --limit 10 --askers 4 --duration 5 >"$OUT/query-cluster-l10-$r.json"
      bench query "${Q[@]}" --event occupancy --topics-per-query 10 --askers 4 --duration 5 >"$OUT/query-occ10-$r.json"
    done
    for p in "${holds[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    sleep 3
  fi
  if has redis; then
    for r in $(seq "$ROUNDS"); do
      for q in 0 5000; do
        log "redis commands round $r, queries $q/s"
        bench occupancy --url "$ALL" --sockets 6000 --topics 1000 --rate 10 --duration 20 \
          --queries "$q" --redis "$REDIS" --timeout 200 >"$OUT/redis-q$q-$r.json"
        sleep 2
      done
    done
  fi
  stop_nodes
fi

if has mem; then
  for variant in shared distinct; do
    for r in $(seq "$ROUNDS"); do
      log "view memory $variant round $r"
      cluster 6 "wm$$-$variant-$r"
      obs=${npids[0]}
      sleep 3
      before=$(rss_kb "$obs")
      holds=()
      for i in 2 3 4 5 6; do
        prefix='bench:'
        [ "$variant" = distinct ] && prefix="bench:n$i-"
        "$BIN" bench hold --url "${urls[$((i - 1))]}" --sockets 1000 --topics 100000 \
          --topics-per-socket 100 --topic-prefix "$prefix" --concurrency 32 --hold 40 \
          --workers 1 --settle 0 --timeout 300 --json >"$OUT/mem-$variant-$r-hold-n$i.json" 2>/dev/null &
        pids+=($!); holds+=($!)
      done
      # Until node 1's view has all 500,000 memberships (≤ 120 s), then settle.
      seen=0; t0=$(date +%s)
      while [ $(($(date +%s) - t0)) -lt 120 ]; do
        seen=$(curl -s "http://${urls[0]}/api/stats/cluster?limit=1" | jq '.total_connections' 2>/dev/null || echo 0)
        [ "$seen" = 500000 ] && break
        sleep 1
      done
      converged_s=$(($(date +%s) - t0))
      sleep 5
      held=$(rss_kb "$obs")
      stats=$(curl -s "http://${urls[0]}/api/stats/cluster?limit=1" | jq -c '{total_connections, cluster_size, degraded, topics: (.topics_omitted + (.connections_by_topic|length))}')
      local_stats=$(curl -s "http://${urls[0]}/api/stats?limit=1" | jq -c '{connection_count, socket_count}')
      for p in "${holds[@]}"; do wait "$p" 2>/dev/null || true; done
      sleep 5
      after=$(rss_kb "$obs")
      jq -n --arg variant "$variant" --argjson before "$before" --argjson held "$held" \
        --argjson after "$after" --argjson seen "${seen:-0}" --argjson conv "$converged_s" \
        --argjson stats "$stats" --argjson local "$local_stats" '{
          variant: $variant, entries: 500000, memberships_seen: $seen, converge_s: $conv,
          observer_cluster_stats: $stats, observer_local: $local,
          rss_kb: {before: $before, held: $held, after_release: $after},
          bytes_per_entry: ((($held - $before) * 1024 / 500000) | round)}' >"$OUT/mem-$variant-$r.json"
      cat "$OUT/mem-$variant-$r.json" | jq -c '{variant, bytes_per_entry, rss_kb, memberships_seen}' >&2
      stop_nodes
      sleep 2
    done
  done
fi

# ---- Issue 11 ---------------------------------------------------------------
single() { # single NAME ARGS... → a fresh node alone; sets urls[0], npids[0]
  npids=(); urls=()
  start_node "$@"
}
if has token; then
  for r in $(seq "$ROUNDS"); do
    log "token round $r"
    single "wt$$-plain-$r" "${NO_LIMITS[@]}"
    bench hold --url "${urls[0]}" --sockets 18000 --hold 5 --settle 5 --server-pid "${npids[0]}" \
      --timeout 120 >"$OUT/hold18k-plain-$r.json"
    stop_nodes
    single "wt$$-hs256-$r" --auth-secret "$SECRET" "${NO_LIMITS[@]}"
    bench hold --url "${urls[0]}" --sockets 18000 --hold 5 --settle 5 --server-pid "${npids[0]}" \
      --token-secret "$SECRET" --timeout 120 >"$OUT/hold18k-hs256-$r.json"
    stop_nodes
  done
fi
# Pairs measured on the same node, in alternating order (ABBA…), so drift
# of the shared machine's load falls on both sides of each ratio.
if has tokenrate; then
  npids=(); urls=()
  start_node "wr$$-plain" "${NO_LIMITS[@]}"
  start_node "wr$$-hs256" --auth-secret "$SECRET" "${NO_LIMITS[@]}"
  for p in $(seq "$PAIRS"); do
    for side in $([ $((p % 2)) = 1 ] && echo "plain hs256" || echo "hs256 plain"); do
      log "token rate pair $p: $side"
      if [ "$side" = plain ]; then
        bench hold --url "${urls[0]}" --sockets 10000 --hold 1 --settle 0 --server-pid "${npids[0]}" \
          --timeout 120 >"$OUT/rate10k-plain-$p.json"
      else
        bench hold --url "${urls[1]}" --sockets 10000 --hold 1 --settle 0 --server-pid "${npids[1]}" \
          --token-secret "$SECRET" --timeout 120 >"$OUT/rate10k-hs256-$p.json"
      fi
      sleep 2
    done
  done
  stop_nodes
fi
if has flood; then
  for limits in default raised; do
    if [ "$limits" = default ]; then single "wf$$-$limits"; else single "wf$$-$limits" "${NO_LIMITS[@]}"; fi
    H=(--url "${urls[0]}" --sockets 5000 --rate 1000 --hold 0 --settle 0 --server-pid "${npids[0]}" --timeout 120)
    for p in $(seq "$PAIRS"); do
      for side in $([ $((p % 2)) = 1 ] && echo "none 10k" || echo "10k none"); do
        log "flood ($limits limits) pair $p: $side"
        if [ "$side" = none ]; then
          bench hold "${H[@]}" >"$OUT/flood-$limits-none-$p.json"
        else
          bench hold "${H[@]}" --flood-joins 10000 >"$OUT/flood-$limits-10k-$p.json"
        fi
        sleep 2
      done
    done
    stop_nodes
  done
fi
log "done: $OUT"
