#!/usr/bin/env bash
# Medians over the runs that scripts/bench.sh wrote: one line per figure.
set -euo pipefail
OUT=${1:-/tmp/headcount-bench}
. "$(cd "$(dirname "$0")" && pwd)/bench-common.sh"
for a in sys jem mi; do
  ls $OUT/hold18k-$a-*.json >/dev/null 2>&1 || continue
  med "hold18k-$a-*" .rss.bytes_per_socket
  med "hold18k-$a-*" .rss.after_close_vs_before
  med "hold18k-$a-*" .rss.before
  med "hold18k-$a-*" .rss.held
  med "hold18k-$a-*" .rss.after_close
  med "hold18k-$a-*" .open.connect_join_per_s
  med "hold18k-$a-*" .open.join_latency.p99_us
  med "hold18k-$a-*" .open.cpu.server_us_per_unit
  med "hold18k-$a-*" .open.cpu.client_us_per_unit
  med "hold18k-$a-*" .server.counts_exact
done
med "hold19900-*" .open.opened
med "hold19900-*" .server.counts_exact
med "hold19900-*" .rss.bytes_per_socket
med "hold19900-*" .open.connect_join_per_s
med "hold-rate1000-*" .open.join_latency.p50_us
med "hold-rate1000-*" .open.join_latency.p99_us
med "hold-rate1000-*" .open.join_latency.max_us
for f in sat 100 10 client; do
  med "fanout-$f-*" .deliveries_per_s
  med "fanout-$f-*" .latency.p50_us
  med "fanout-$f-*" .latency.p99_us
  med "fanout-$f-*" .latency.max_us
  med "fanout-$f-*" .lost
  med "fanout-$f-*" .messages_per_s
  med "fanout-$f-*" .cpu_per_delivery.server_us_per_unit
  med "fanout-$f-*" .cpu_per_delivery.client_us_per_unit
done
for q in local cluster; do
  med "query-$q-*" .latency.p50_us
  med "query-$q-*" .latency.p99_us
  med "query-$q-*" .latency.max_us
  med "query-$q-*" .queries_per_s
  med "query-$q-*" .stats_bytes
  med "query-$q-*" .counts_exact
  med "query-$q-*" .cpu_per_query.server_us_per_unit
done
med "churn-*" .operations
med "churn-*" .ops_per_s
med "churn-*" .cycles_per_s
med "churn-*" .failed_cycles
med "churn-*" .drift.connections
med "churn-*" .drift.sockets
med "churn-*" .drift.per_topic_abs
med "churn-*" .returned_to_baseline
med "churn-*" .cpu_per_op.server_us_per_unit
med "cluster1-*" .join_visible.p50_us
med "cluster1-*" .join_visible.p99_us
med "cluster1-*" .missed
if ls $OUT/presence5000-*.json >/dev/null 2>&1; then
  med "presence5000-*" .diffs.per_s
  med "presence5000-*" .cpu.server_us_per_delivery
  med "presence5000-*" .state.join_to_state_us
  med "presence5000-*" .state.state_bytes
  med "presence5000-*" .state.state_keys
  med "presence5000-*" .propagation.all.p99_us
  med "presence5000-*" .propagation.lost
  med "presence5000-*" .churn.tally.rate_limited
  med "presence5000-*" .memory.bytes_per_presence_member
  med "presence5000-*" .truth.exact
fi
