#!/usr/bin/env bash
# The figures of issues 12 (presence), 13 (webhooks) and 14 (Redis Cluster)
# in BENCHMARKS.md. Everything on loopback, on free ports it picks, cleaned
# up on exit (its own pids only), bounded by MAX_SECS in all.
#
#   scripts/bench-wave-b.sh OUT            # all phases, ROUNDS rounds each
#   PHASES="p1 p3" scripts/bench-wave-b.sh OUT
#
# Phases:
#   p1  issue 12, one node: 10,000 members of one presence topic, 500
#       joins+leaves/s for 30 s (`bench presence`); a fresh node per round.
#   p3  issue 12, three nodes on one redis-server: 3 × 3,000 members, 50
#       joins+leaves/s (diff propagation, memory per presence member).
#   wh  issue 13: 10,000 topics occupied and vacated over 60 s on 3 nodes
#       (`bench webhooks`, its own receiver); fresh nodes per round.
#   rc  issue 14: a 3-master Redis Cluster (3 replicas,
#       deploy/redis-cluster/redis-cluster-start.sh) and 6 nodes on it; per
#       round 6 `bench hold` processes of PER sockets (one per node), every
#       node's /api/stats/cluster polled until exact, then a master is
#       SIGKILLed and the nodes are polled until exact again
#       (scripts/cluster-watch.py); the master is started again (it comes
#       back as a replica) before the next round.
#   relay  issue 14: `bench fanout --publish-url`: subscribers on one node,
#       messages published through another, on the Redis Cluster (sharded
#       pub/sub) and on a single redis-server, alternately in one run; and
#       on one node (no relay) for reference.
#
# Env: BIN (default cargo's release build), ROUNDS (3), MAX_SECS (3600),
#      PER (16700 sockets per node in rc), HOLD_S (60), NODE_TIMEOUT_MS (2000).
# Nodes run with the per-socket limits raised (NO_LIMITS), as in
# scripts/bench.sh. Summarise with: scripts/bench-wave-b.sh --summary OUT
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

summary() { # summary OUT: medians (and the rounds' values) of every figure
  local OUT=$1
  med() { # med GLOB JQ-EXPR
    local vals n m
    vals=$(for f in $OUT/$1.json; do [ -s "$f" ] && jq -r "$2" "$f"; done 2>/dev/null | sort -g | tr '\n' ' ')
    n=$(echo "$vals" | wc -w)
    m=$(echo "$vals" | tr ' ' '\n' | grep -v '^$' | sed -n "$(((n + 1) / 2))p")
    printf '%-22s %-52s median %-12s runs: %s\n' "$1" "$2" "$m" "$vals"
  }
  if ls "$OUT"/p1-*.json >/dev/null 2>&1; then
    med "p1-*" .members.opened
    med "p1-*" .state.state_keys
    med "p1-*" .state.state_bytes
    med "p1-*" .state.join_to_state_us
    med "p1-*" .state.reply_to_state_us
    med "p1-*" .churn.changes_per_s
    med "p1-*" .diffs.per_s
    med "p1-*" .diffs.bytes_per_delivery
    med "p1-*" .cpu.server_us_per_delivery
    med "p1-*" .cpu.server_cores
    med "p1-*" .cpu.client_cpu_s
    med "p1-*" .propagation.all.p99_us
    med "p1-*" .propagation.lost
    med "p1-*" .churn.tally.rate_limited
    med "p1-*" .churn.tally.skipped
    med "p1-*" .memory.bytes_per_presence_member
    med "p1-*" .truth.exact
  fi
  if ls "$OUT"/p3-*.json >/dev/null 2>&1; then
    med "p3-*" .members.opened
    med "p3-*" .converged.ok
    med "p3-*" .propagation.all.p50_us
    med "p3-*" .propagation.all.p99_us
    med "p3-*" .propagation.all.max_us
    med "p3-*" .propagation.join.p99_us
    med "p3-*" .propagation.leave.p99_us
    med "p3-*" .propagation.lost
    med "p3-*" .diffs.per_s
    med "p3-*" .cpu.server_us_per_delivery
    med "p3-*" .state.join_to_state_us
    med "p3-*" .memory.bytes_per_presence_member
    med "p3-*" .memory.bytes_per_meta_held
    med "p3-*" .truth.exact
  fi
  if ls "$OUT"/wh-*.json >/dev/null 2>&1; then
    med "wh-*" .schedule.tally.joins_ok
    med "wh-*" .schedule.tally.leaves_ok
    med "wh-*" .webhooks.by_name.channel_occupied.expected
    med "wh-*" .webhooks.by_name.channel_occupied.delivered
    med "wh-*" .webhooks.by_name.channel_vacated.expected
    med "wh-*" .webhooks.by_name.channel_vacated.delivered
    med "wh-*" '[.webhooks.by_name[].lost] | add'
    med "wh-*" '[.webhooks.by_name[].doubled] | add'
    med "wh-*" '[.webhooks.by_name[].unexpected] | add'
    med "wh-*" .webhooks.exact
    med "wh-*" .webhooks.latency.p50_us
    med "wh-*" .webhooks.latency.p99_us
    med "wh-*" .webhooks.latency.max_us
    med "wh-*" .webhooks.by_name.channel_occupied.latency.p99_us
    med "wh-*" .webhooks.by_name.channel_vacated.latency.p99_us
    med "wh-*" .webhooks.redelivered
    med "wh-*" .webhooks.posts
  fi
  if ls "$OUT"/rc-exact-*.json >/dev/null 2>&1; then
    med "rc-exact-*" .exact
    med "rc-exact-*" .exact_after_s
    med "rc-exact-*" '[.answers[].total_connections] | unique | map(tostring) | join("/")'
    med "rc-exact-*" '[.answers[].socket_count] | unique | map(tostring) | join("/")'
    med "rc-exact-*" '[.answers[].cluster_size] | unique | map(tostring) | join("/")'
    med "rc-hold-*-n1" .open.connect_join_per_s
    med "rc-hold-*" .server.counts_exact
    med "rc-hold-*" .open.failed
    med "rc-hold-*" .rss.bytes_per_socket
    med "rc-failover-*" .first_degraded_s
    med "rc-failover-*" .replica_promoted_s
    med "rc-failover-*" .degraded_until_s
    med "rc-failover-*" .exact_after_s
    med "rc-failover-*" .wrong_answers
    med "rc-failover-*" .exact
  fi
  for k in cluster-sat single-sat cluster-paced single-paced local; do
    ls "$OUT"/relay-$k-*.json >/dev/null 2>&1 || continue
    med "relay-$k-*" .messages_per_s
    med "relay-$k-*" '(.deliveries_per_s / .subscribers | round)'
    med "relay-$k-*" .deliveries_per_s
    med "relay-$k-*" .lost
    med "relay-$k-*" .duplicates
    med "relay-$k-*" .latency.p50_us
    med "relay-$k-*" .latency.p99_us
  done
  if ls "$OUT"/relay-cluster-*.json >/dev/null 2>&1; then
    # Per-round ratio, sharded over single (the two run back to back).
    for f in "$OUT"/relay-cluster-*.json; do
      s=${f/relay-cluster-/relay-single-}
      [ -s "$f" ] && [ -s "$s" ] || continue
      echo "ratio cluster/single deliveries/s $(basename "$f" .json): $(jq -n --slurpfile c "$f" --slurpfile s "$s" '($c[0].deliveries_per_s / $s[0].deliveries_per_s * 1000 | round) / 1000')"
    done
  fi
}
if [ "${1:-}" = "--summary" ]; then
  summary "${2:?usage: $0 --summary OUT}"
  exit 0
fi

OUT=${1:-/tmp/headcount-bench-wave-b}
BIN=${BIN:-$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)/release/headcount}
PHASES=${PHASES:-p1 p3 wh rc relay}
ROUNDS=${ROUNDS:-3}
MAX_SECS=${MAX_SECS:-3600}
PER=${PER:-16700}
HOLD_S=${HOLD_S:-60}
export NODE_TIMEOUT_MS=${NODE_TIMEOUT_MS:-2000}
export RUST_BACKTRACE=0
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release" >&2; exit 1; }
NO_LIMITS=(--max-messages-per-second 1000000 --max-messages-burst 1000000
  --max-joins-per-second 1000000 --max-joins-burst 1000000)
WH_SECRET=bench-webhook-secret
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/run.log" >&2; }

# --- processes and cleanup -------------------------------------------------
pids=()       # headcount nodes and bench processes started here
redis_pids=() # single redis-servers started here (pid files)
RC_DIR=""
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for f in "${redis_pids[@]}"; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  [ -n "$RC_DIR" ] && "$ROOT/deploy/redis-cluster/redis-cluster-stop.sh" "$RC_DIR" >/dev/null 2>&1
  if [ -n "${WATCHDOG:-}" ]; then
    kill $(pgrep -P "$WATCHDOG") "$WATCHDOG" 2>/dev/null
  fi
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
# The whole run is bounded: the watchdog TERMs this script after MAX_SECS.
(sleep "$MAX_SECS" && log "MAX_SECS=$MAX_SECS reached, stopping" && kill -TERM $$) &
WATCHDOG=$!

# --- free ports --------------------------------------------------------------
# Ports below the ephemeral range (client ports never take them), free now.
listening() { ss -Htln | awk '{print $4}' | sed 's/.*://' | sort -un; }
TAKEN=" "
take_ports() { # take_ports START COUNT [ALSO_OFFSET] → first free block's start
  local p=$1 n=$2 off=${3:-} busy i ok
  busy=" $(listening | tr '\n' ' ') "
  while [ $((p + n + ${off:-0})) -lt 32768 ]; do
    ok=1
    for i in $(seq 0 $((n - 1))); do
      case "$busy$TAKEN" in *" $((p + i)) "*) ok= ;; esac
      if [ -n "$off" ]; then case "$busy$TAKEN" in *" $((p + i + off)) "*) ok= ;; esac; fi
      [ -z "$ok" ] && break
    done
    if [ -n "$ok" ]; then
      for i in $(seq 0 $((n - 1))); do TAKEN+="$((p + i)) "; [ -n "$off" ] && TAKEN+="$((p + i + off)) "; done
      echo "$p"
      return
    fi
    p=$((p + n))
  done
  echo "no $n free ports from $1" >&2
  exit 1
}

# --- helpers -----------------------------------------------------------------
start_redis() { # start_redis PORT NAME → a redis-server of our own
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$OUT/$2.pid" --logfile "$OUT/$2.log" --dir "$OUT"
  redis_pids+=("$OUT/$2.pid")
  for _ in $(seq 50); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server on $1 did not start" >&2
  exit 1
}
stop_redis() { # stop_redis NAME
  local f="$OUT/$1.pid"
  [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  sleep 0.3
}
LAST_PID=
serve() { # serve PORT NAME ARGS... → LAST_PID; waits until it listens
  local port=$1 name=$2
  shift 2
  RUST_LOG=warn "$BIN" serve --bind "127.0.0.1:$port" --node "$name@127.0.0.1" \
    --allow-topic 'bench:*' "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" </dev/null &
  LAST_PID=$!
  pids+=("$LAST_PID")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "node $name on $port did not start: $(tail -3 "$OUT/$name.err")" >&2
  exit 1
}
serve_three() { # serve_three BASE NAME REDIS_PORT ARGS... → np; all three in one cluster
  local base=$1 name=$2 rport=$3 i
  shift 3
  np=()
  for i in 0 1 2; do
    serve $((base + i)) "${name}n$i" --redis "redis://127.0.0.1:$rport" \
      --redis-prefix "$name.$$" "$@" "${NO_LIMITS[@]}"
    np+=("$LAST_PID")
  done
  cluster_size_is 3 127.0.0.1:$base 127.0.0.1:$((base + 1)) 127.0.0.1:$((base + 2))
}
stop_nodes() { # stop_nodes PID... (SIGTERM, wait up to 10 s)
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
cluster_size_is() { # cluster_size_is N URL... (waits up to 20 s)
  local n=$1 u
  shift
  for u in "$@"; do
    for _ in $(seq 200); do
      [ "$(curl -s "http://$u/api/stats/cluster?limit=1" | jq -r .cluster_size 2>/dev/null)" = "$n" ] && break
      sleep 0.1
    done
  done
}
bench() { # bench NAME ARGS... → OUT/NAME.json (a failed run leaves its stderr)
  local name=$1
  shift
  log "bench $name: $*"
  if "$BIN" bench "$@" --json >"$OUT/$name.json" 2>"$OUT/$name.err"; then
    log "bench $name: done"
  else
    log "bench $name: FAILED ($(tail -2 "$OUT/$name.err" | tr '\n' ' '))"
  fi
}

log "bin $BIN, phases: $PHASES, rounds $ROUNDS; machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
git -C "$ROOT" rev-parse HEAD >"$OUT/commit" 2>/dev/null || true

for phase in $PHASES; do
  case $phase in
  p1) # --- issue 12, one node ------------------------------------------------
    port=$(take_ports 21400 1)
    for r in $(seq "$ROUNDS"); do
      # 10,000 members + the churners' keys: above the default
      # --presence-max-members (10,000), where the topic turns count-only.
      serve "$port" "p1n$r" --presence-topic 'bench:presence*' \
        --presence-max-members 20000 "${NO_LIMITS[@]}"
      bench "p1-$r" presence --url "127.0.0.1:$port" --sockets 10000 --rate 500 \
        --duration 30 --server-pid "$LAST_PID" --settle 5 --timeout 300
      stop_nodes "$LAST_PID"
    done
    ;;
  p3) # --- issue 12, three nodes ---------------------------------------------
    rport=$(take_ports 21420 1)
    base=$(take_ports 21430 3)
    start_redis "$rport" p3-redis
    for r in $(seq "$ROUNDS"); do
      serve_three "$base" "p3r$r" "$rport" --presence-topic 'bench:presence*'
      bench "p3-$r" presence --url "127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))" \
        --sockets 9000 --rate 50 --duration 30 --server-pid "${np[0]},${np[1]},${np[2]}" \
        --settle 5 --timeout 300
      stop_nodes "${np[@]}"
    done
    stop_redis p3-redis
    ;;
  wh) # --- issue 13 ----------------------------------------------------------
    rport=$(take_ports 21440 1)
    base=$(take_ports 21450 3)
    whport=$(take_ports 21460 1)
    start_redis "$rport" wh-redis
    for r in $(seq "$ROUNDS"); do
      serve_three "$base" "whr$r" "$rport" --webhook-url "http://127.0.0.1:$whport/hook" \
        --webhook-secret "$WH_SECRET" --webhook-vacate-delay-ms 3000
      bench "wh-$r" webhooks --url "127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))" \
        --topics 10000 --duration 60 --hold 5 --webhook-secret "$WH_SECRET" \
        --webhook-vacate-delay-ms 3000 --receiver-bind "127.0.0.1:$whport" --timeout 300
      stop_nodes "${np[@]}"
    done
    stop_redis wh-redis
    ;;
  rc | relay) # --- issue 14 ---------------------------------------------------
    if [ -z "$RC_DIR" ]; then
      rcp=$(take_ports 17400 6 10000)
      RC_DIR="$OUT/redis-cluster"
      rports=()
      for i in 0 1 2 3 4 5; do rports+=($((rcp + i))); done
      log "redis cluster on ${rports[*]} (node timeout $NODE_TIMEOUT_MS ms)"
      "$ROOT/deploy/redis-cluster/redis-cluster-start.sh" "$RC_DIR" "${rports[@]}" | tee -a "$OUT/run.log"
      rcbase=$(take_ports 21470 6)
      rcpids=()
      rcurls=()
      for i in 0 1 2 3 4 5; do
        seeds=""
        for k in 0 1 2; do seeds+="${seeds:+,}redis://127.0.0.1:${rports[$(((i + k) % 6))]}"; done
        serve $((rcbase + i)) "rcn$i" --redis "$seeds" --redis-prefix "rc$$" \
          --presence-topic 'bench:presence*' "${NO_LIMITS[@]}"
        rcpids+=("$LAST_PID")
        rcurls+=("127.0.0.1:$((rcbase + i))")
      done
      cluster_size_is 6 "${rcurls[@]}"
    fi
    if [ "$phase" = rc ]; then
      for r in $(seq "$ROUNDS"); do
        holds=()
        for i in 0 1 2 3 4 5; do
          log "hold $PER on ${rcurls[$i]}"
          "$BIN" bench hold --url "${rcurls[$i]}" --sockets "$PER" --hold "$HOLD_S" --workers 2 \
            --server-pid "${rcpids[$i]}" --settle 0 --timeout 300 --json \
            >"$OUT/rc-hold-$r-n$((i + 1)).json" 2>"$OUT/rc-hold-$r-n$((i + 1)).err" &
          holds+=($!)
          pids+=($!)
        done
        all=$(IFS=,; echo "${rcurls[*]}")
        log "rc round $r: waiting for every node to count $((6 * PER)) sockets"
        python3 "$HERE/cluster-watch.py" exact --urls "$all" --sockets $((6 * PER)) --nodes 6 \
          --timeout 90 >"$OUT/rc-exact-$r.json" || log "rc round $r: not exact within 90 s"
        jq -c '{exact, exact_after_s, answers: [.answers[] | {node, total_connections, socket_count, cluster_size, degraded}]}' "$OUT/rc-exact-$r.json" | tee -a "$OUT/run.log"
        # A master: the r-th of the masters, by port.
        masters=()
        for p in "${rports[@]}"; do
          redis-cli -p "$p" role 2>/dev/null | head -1 | grep -qx master && masters+=("$p")
        done
        victim=${masters[$(((r - 1) % ${#masters[@]}))]}
        vpid=$(cat "$RC_DIR/$victim/redis.pid")
        vid=$(redis-cli -p "$victim" cluster myid)
        replica=$(redis-cli -p "$victim" cluster nodes | awk -v id="$vid" '$4 == id {split($2, a, "[:@]"); print a[2]; exit}')
        log "rc round $r: SIGKILL master $victim (pid $vpid, replica $replica)"
        python3 "$HERE/cluster-watch.py" failover --urls "$all" --sockets $((6 * PER)) --nodes 6 \
          --kill "$vpid" --replica "$replica" --stable 2 --timeout 60 >"$OUT/rc-failover-$r.json" ||
          log "rc round $r: not exact within 60 s of the kill"
        jq -c 'del(.answers)' "$OUT/rc-failover-$r.json" | tee -a "$OUT/run.log"
        redis-server "$RC_DIR/$victim/redis.conf"
        wait "${holds[@]}" || log "rc round $r: a hold failed"
        # Back to 3 masters + 3 synced replicas before the next kill.
        for _ in $(seq 300); do
          ok=1
          for p in "${rports[@]}"; do
            redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || ok=
            redis-cli -p "$p" info replication 2>/dev/null | grep -q '^master_link_status:down' && ok=
          done
          [ "$(redis-cli -p "${rports[0]}" cluster nodes | grep -c 'master' || true)" -eq 3 ] || ok=
          [ -n "$ok" ] && break
          sleep 0.2
        done
        sleep 3
      done
    else
      rport=$(take_ports 21480 1)
      sbase=$(take_ports 21490 2)
      start_redis "$rport" relay-redis
      spids=()
      for i in 0 1; do
        serve $((sbase + i)) "sn$i" --redis "redis://127.0.0.1:$rport" --redis-prefix "sr$$" \
          "${NO_LIMITS[@]}"
        spids+=("$LAST_PID")
      done
      cluster_size_is 2 127.0.0.1:$sbase 127.0.0.1:$((sbase + 1))
      FAN=(--sockets ${RELAY_SOCKETS:-100} --messages ${RELAY_MESSAGES:-20000} --publishers 8 --timeout 300)
      # sat: published as fast as the publishing node accepts (past what
      # the relay carries: its bounded queue drops, counted as lost);
      # paced: RELAY_RATE messages/s.
      for r in $(seq "$ROUNDS"); do
        for pace in sat paced; do
          P=()
          [ $pace = paced ] && P=(--publish-rate "${RELAY_RATE:-5000}")
          bench "relay-cluster-$pace-$r" fanout --url "${rcurls[0]}" --publish-url "${rcurls[1]}" \
            --server-pid "${rcpids[0]}" "${FAN[@]}" "${P[@]}"
          bench "relay-single-$pace-$r" fanout --url "127.0.0.1:$sbase" \
            --publish-url "127.0.0.1:$((sbase + 1))" --server-pid "${spids[0]}" "${FAN[@]}" "${P[@]}"
        done
        bench "relay-local-$r" fanout --url "${rcurls[0]}" --server-pid "${rcpids[0]}" "${FAN[@]}"
      done
      stop_nodes "${spids[@]}"
      stop_redis relay-redis
    fi
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
log "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
summary "$OUT" | tee "$OUT/summary.txt"
