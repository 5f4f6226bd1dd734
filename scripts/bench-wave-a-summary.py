#!/usr/bin/env python3
"""Medians of the reports scripts/bench-wave-a.sh wrote to OUT.

    python3 scripts/bench-wave-a-summary.py OUT
"""
import glob
import json
import os
import statistics
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "/tmp/headcount-bench-wave-a"


def load(pattern):
    runs = []
    for f in sorted(glob.glob(os.path.join(OUT, pattern))):
        with open(f) as fh:
            try:
                runs.append((os.path.basename(f), json.load(fh)))
            except json.JSONDecodeError:
                print(f"  {f}: not JSON (failed run?)")
    return runs


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def show(name, values, unit=""):
    vals = [v for v in values if v is not None]
    if not vals:
        return
    print(f"  {name}: median {med(vals):g}{unit}  [{' '.join(f'{v:g}' for v in vals)}]")


def get(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p) if isinstance(d, dict) else None
    return d


print("occupancy, 6 nodes, 10,000 topics, 15,000 watchers, 1,000 changes/s target")
runs = load("occ10k-*.json")
show("push latency p50 µs", [get(r, "push_latency", "p50_us") for _, r in runs])
show("push latency p99 µs", [get(r, "push_latency", "p99_us") for _, r in runs])
show("push latency max µs", [get(r, "push_latency", "max_us") for _, r in runs])
show("changes/s", [get(r, "churn", "changes_per_s") for _, r in runs])
show("lost", [get(r, "lost") for _, r in runs])
show("stale at quiet", [get(r, "quiet", "stale_observers") for _, r in runs])
show("Redis INFO commands/s", [get(r, "redis_commands", "redis_info_per_s") for _, r in runs])

print("query on node 1, 6 nodes × 1,000 topics")
for kind in ["local-full", "cluster-full", "local-l10", "cluster-l10", "occ10"]:
    runs = load(f"query-{kind}-*.json")
    if not runs:
        continue
    print(f" {kind} ({runs[0][1].get('event')} {runs[0][1].get('payload')}, askers {runs[0][1].get('askers')})")
    show("queries/s", [get(r, "queries_per_s") for _, r in runs])
    show("p50 µs", [get(r, "latency", "p50_us") for _, r in runs])
    show("p99 µs", [get(r, "latency", "p99_us") for _, r in runs])
    show("reply bytes", [get(r, "reply_bytes_mean") for _, r in runs])
    show("server CPU µs/query", [get(r, "cpu_per_query", "server_us_per_unit") for _, r in runs])
    show("errors", [get(r, "errors") for _, r in runs])

print("Redis commands/s, 6 nodes, churn 10/s, without / with 5,000 get_cluster_stats/s on node 1")
for q in ["0", "5000"]:
    runs = load(f"redis-q{q}-*.json")
    print(f" queries {q}/s")
    show("Redis INFO commands/s (all nodes)", [get(r, "redis_commands", "redis_info_per_s") for _, r in runs])
    show("node 1 headcount_redis_commands_total /s",
         [get(r, "redis_commands", "nodes")[0]["per_s"] if get(r, "redis_commands", "nodes") else None for _, r in runs])
    show("queries answered /s", [get(r, "queries", "per_s") for _, r in runs])
    show("query p99 µs", [get(r, "queries", "latency", "p99_us") for _, r in runs])
idle = load("redis-q0-*.json")
busy = load("redis-q5000-*.json")
ratios = []
for (_, a), (_, b) in zip(idle, busy):
    x, y = get(a, "redis_commands", "redis_info_per_s"), get(b, "redis_commands", "redis_info_per_s")
    if x and y:
        ratios.append(round(y / x, 4))
show("ratio with queries / idle (INFO, per round)", ratios)

print("view memory on the observing node (500,000 (node, topic) entries)")
for v in ["shared", "distinct"]:
    runs = [r for r in load(f"mem-{v}-*.json") if "hold" not in r[0]]
    print(f" {v}")
    show("bytes per entry", [get(r, "bytes_per_entry") for _, r in runs])
    show("RSS before KiB", [get(r, "rss_kb", "before") for _, r in runs])
    show("RSS held KiB", [get(r, "rss_kb", "held") for _, r in runs])
    show("RSS after release KiB", [get(r, "rss_kb", "after_release") for _, r in runs])
    show("memberships seen", [get(r, "memberships_seen") for _, r in runs])

print("hold 18,000 sockets, fresh node each")
for v in ["plain", "hs256"]:
    runs = load(f"hold18k-{v}-*.json")
    print(f" {v}")
    show("connect+join/s", [get(r, "open", "connect_join_per_s") for _, r in runs])
    show("bytes/socket", [get(r, "rss", "bytes_per_socket") for _, r in runs])
    show("server CPU µs/socket", [get(r, "open", "cpu", "server_us_per_unit") for _, r in runs])
    show("client CPU µs/socket", [get(r, "open", "cpu", "client_us_per_unit") for _, r in runs])
    show("failed", [get(r, "open", "failed") for _, r in runs])

def pairs(a_pat, b_pat, *path):
    a = {n.rsplit("-", 1)[1]: r for n, r in load(a_pat)}
    b = {n.rsplit("-", 1)[1]: r for n, r in load(b_pat)}
    out = []
    for k in sorted(set(a) & set(b), key=lambda s: int(s.split(".")[0])):
        x, y = get(a[k], *path), get(b[k], *path)
        if x and y:
            out.append(round(y / x, 3))
    return out

print("hold 10,000 sockets, alternating pairs on two standing nodes")
for v in ["plain", "hs256"]:
    runs = load(f"rate10k-{v}-*.json")
    print(f" {v}")
    show("connect+join/s", [get(r, "open", "connect_join_per_s") for _, r in runs])
    show("server CPU µs/socket", [get(r, "open", "cpu", "server_us_per_unit") for _, r in runs])
show("rate ratio hs256 / plain (per pair)", pairs("rate10k-plain-*.json", "rate10k-hs256-*.json", "open", "connect_join_per_s"))
show("server CPU ratio hs256 / plain (per pair)", pairs("rate10k-plain-*.json", "rate10k-hs256-*.json", "open", "cpu", "server_us_per_unit"))

print("join flood: hold 5,000 sockets at 1,000/s, alternating pairs on one node")
for limits in ["default", "raised"]:
    print(f" {limits} limits")
    for side in ["none", "10k"]:
        runs = load(f"flood-{limits}-{side}-*.json")
        print(f"  flood {side}")
        show(" join p50 µs", [get(r, "open", "join_latency", "p50_us") for _, r in runs])
        show(" join p99 µs", [get(r, "open", "join_latency", "p99_us") for _, r in runs])
        show(" connect+join p99 µs", [get(r, "open", "connect_join_latency", "p99_us") for _, r in runs])
        show(" server CPU µs/socket", [get(r, "open", "cpu", "server_us_per_unit") for _, r in runs])
        show(" flood sent/s", [get(r, "flood", "sent_per_s") for _, r in runs])
        show(" flood ok", [get(r, "flood", "replies_ok") for _, r in runs])
        show(" flood rate limited", [get(r, "flood", "rate_limited") for _, r in runs])
        show(" flood closed by server", [get(r, "flood", "closed_by_server") for _, r in runs])
    show(" join p99 ratio flood / none (per pair)",
         pairs(f"flood-{limits}-none-*.json", f"flood-{limits}-10k-*.json", "open", "join_latency", "p99_us"))
