#!/usr/bin/env bash
# headcount against the floor server (`headcount bench floor-server`: a bare
# tokio-tungstenite Phoenix V2 server) with the same client in the same
# run, for the side-by-side table in BENCHMARKS.md. Each round starts every
# server fresh in turn and measures, in order: connect + join of 18,000
# sockets (CPU per socket, RSS per socket), saturated fan-out to 10,000
# subscribers (300 HTTP broadcasts as fast as accepted) and isolated events
# (10 broadcasts at 1/s); then the kernel's bare-send floor
# (scripts/sendfloor.py), without and with a reader waiting on the sockets.
#
#   cargo build --release
#   scripts/bench-floor.sh 3 /tmp/floor-out     # then read the summary it prints
#
# OTHER=path adds a third server binary (another build of headcount, e.g.
# the commit before a change) to every round, run with OTHER_ARGS (a build
# older than the per-socket limits takes no limit flags).
set -euo pipefail
RUNS=${1:-3}
OUT=${2:-/tmp/headcount-floor}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/bench-common.sh"
BIN=${BIN:-$(release_bin)}
PORT=${PORT:-21100}
mkdir -p "$OUT"
export RUST_BACKTRACE=0

start() { # start NAME → sets PID
  local cmd
  case $1 in
    headcount) cmd=("$BIN" serve --bind 127.0.0.1:$PORT --node bench@127.0.0.1
      --allow-topic 'bench:*' --client-broadcast "${NO_LIMITS[@]}") ;;
    other) cmd=("$OTHER" serve --bind 127.0.0.1:$PORT --node bench@127.0.0.1
      --allow-topic 'bench:*' --client-broadcast ${OTHER_ARGS:-}) ;;
    floor) cmd=("$BIN" bench floor-server --bind 127.0.0.1:$PORT) ;;
  esac
  RUST_LOG=warn "${cmd[@]}" >"$OUT/serve.out" 2>"$OUT/serve.err" </dev/null &
  PID=$!
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "$1 did not start" >&2; exit 1
}

servers="headcount floor${OTHER:+ other}"
for r in $(seq "$RUNS"); do
  for s in $servers; do
    start "$s"
    bench "$s-hold-$r" hold --sockets 18000 --hold 5 --server-pid "$PID" --settle 5
    stop
    start "$s"
    bench "$s-sat-$r" fanout --sockets 10000 --messages 300 --server-pid "$PID"
    bench "$s-iso-$r" fanout --sockets 10000 --messages 10 --publish-rate 1 --server-pid "$PID"
    stop
  done
  python3 "$here/sendfloor.py" | tee "$OUT/sendfloor-$r.txt"
  python3 "$here/sendfloor.py" --live | tee "$OUT/sendfloor-live-$r.txt"
done

MED_FORMAT='%-18s %-42s median %-10s runs: %s\n'
for s in $servers; do
  med "$s-hold-*" .open.cpu.server_us_per_unit
  med "$s-hold-*" .open.connect_join_per_s
  med "$s-hold-*" .rss.bytes_per_socket
  for f in sat iso; do
    med "$s-$f-*" .cpu_per_delivery.server_us_per_unit
    med "$s-$f-*" .deliveries_per_s
    med "$s-$f-*" .latency.p50_us
    med "$s-$f-*" .latency.p99_us
    med "$s-$f-*" .lost
  done
done
grep -h median "$OUT"/sendfloor-[0-9]*.txt
grep -h median "$OUT"/sendfloor-live-*.txt
