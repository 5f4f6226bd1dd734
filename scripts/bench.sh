#!/usr/bin/env bash
# Runs the measurements quoted in BENCHMARKS.md: each scenario RUNS times
# against a fresh release node on loopback, one JSON report per run in OUT.
# Summarise with scripts/bench-summary.sh OUT.
#
#   cargo build --release            # and --features jemalloc / mimalloc
#   scripts/bench.sh 3 /tmp/bench-out   # BIN: cargo's release build unless set
#
# ALLOCS="sys=path jem=path mi=path" adds the allocator comparison of `hold`.
#
# Nodes run with the per-socket limits (SPEC §8.4) raised out of the way, so
# the scenarios measure what they did before the limits existed; `presence`
# stays within the default limits on its own (its churners count any
# `rate limited` reply apart).
set -euo pipefail
RUNS=${1:-3}
OUT=${2:-/tmp/headcount-bench}
. "$(cd "$(dirname "$0")" && pwd)/bench-common.sh"
BIN=${BIN:-$(release_bin)}
PORT=${PORT:-21100}   # below the ephemeral range, so client ports never take it
mkdir -p "$OUT"
export RUST_BACKTRACE=0

serve() { # serve BIN → sets PID
  RUST_LOG=warn "$1" serve --bind 127.0.0.1:$PORT --node bench@127.0.0.1 \
    --allow-topic 'bench:*' --presence-topic 'bench:presence*' --client-broadcast \
    "${NO_LIMITS[@]}" >"$OUT/serve.out" 2>"$OUT/serve.err" </dev/null &
  PID=$!
  for _ in $(seq 50); do grep -q listening "$OUT/serve.out" 2>/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}

for r in $(seq "$RUNS"); do
  # Memory and connect rate: a fresh node per run, so "before" is an idle node.
  for alloc in ${ALLOCS:-sys=$BIN}; do
    a=${alloc%%=*}; serve "${alloc#*=}"
    bench "hold18k-$a-$r" hold --sockets 18000 --hold 5 --server-pid "$PID" --settle 5
    stop
  done
  serve "$BIN"
  bench "hold19900-$r" hold --sockets 19900 --hold 2 --server-pid "$PID" --settle 0
  bench "hold-rate1000-$r" hold --sockets 5000 --rate 1000 --hold 0 --server-pid "$PID" --settle 0
  bench "fanout-sat-$r" fanout --sockets 10000 --messages 300 --server-pid "$PID"
  bench "fanout-100-$r" fanout --sockets 10000 --messages 300 --publish-rate 100 --server-pid "$PID"
  bench "fanout-10-$r" fanout --sockets 10000 --messages 30 --publish-rate 10 --server-pid "$PID"
  bench "fanout-client-$r" fanout --sockets 10000 --messages 300 --publish client --server-pid "$PID"
  bench "query-local-$r" query --topics 10000 --duration 5 --server-pid "$PID"
  bench "query-cluster-$r" query --topics 10000 --duration 5 --event cluster --server-pid "$PID"
  bench "churn-$r" churn --cycles 270000 --topics 10 --workers 2 --concurrency 128 --server-pid "$PID"
  bench "cluster1-$r" cluster --rounds 100
  stop
  # Presence on a fresh node (its memory comparison wants a quiet one):
  # 5,000 members, 100 joins+leaves/s for 30 s.
  serve "$BIN"
  bench "presence5000-$r" presence --sockets 5000 --rate 100 --duration 30 \
    --server-pid "$PID" --settle 5
  stop
done
