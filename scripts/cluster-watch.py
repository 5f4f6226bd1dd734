#!/usr/bin/env python3
"""Polls every node's GET /api/stats/cluster for scripts/bench-wave-b.sh.

  cluster-watch.py exact    --urls A,B,.. --sockets N --nodes K --timeout S
      until every node reports N sockets and connections over K nodes, not
      degraded; prints one JSON object (time taken, each node's answer).
  cluster-watch.py failover --urls A,B,.. --sockets N --nodes K --timeout S
                            --kill PID [--replica PORT] [--stable S]
      SIGKILLs PID (a Redis master), then polls until every node has been
      exact and not degraded for --stable seconds in a row; prints one JSON
      object: when the first node said degraded, when the last stopped,
      when the figures were exact again for good, how many answers were
      neither degraded nor exact (wrong figures), and when --replica PORT
      (the killed master's replica) answered ROLE as master.

Loopback only; every request has a 1 s timeout; bounded by --timeout.
"""
import argparse
import json
import os
import signal
import socket
import sys
import time
import urllib.request


def stats(url):
    try:
        with urllib.request.urlopen(f"http://{url}/api/stats/cluster?limit=10", timeout=1) as r:
            return json.loads(r.read())
    except Exception as e:  # a timeout, a refused connection: recorded as such
        return {"error": str(e)}


def exact(s, sockets, nodes):
    return (
        "error" not in s
        and not s.get("degraded", True)
        and s.get("cluster_size") == nodes
        and s.get("total_connections") == sockets
        and s.get("socket_count") == sockets
    )


def brief(s):
    keep = ("node", "total_connections", "socket_count", "cluster_size", "degraded", "source", "error")
    out = {k: s[k] for k in keep if k in s}
    if isinstance(s.get("nodes"), dict):
        out["per_node_sockets"] = {n: v.get("socket_count") for n, v in s["nodes"].items()}
    return out


def role_is_master(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
            c.sendall(b"ROLE\r\n")
            return c.recv(64).startswith(b"*3\r\n$6\r\nmaster")
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["exact", "failover"])
    ap.add_argument("--urls", required=True)
    ap.add_argument("--sockets", type=int, required=True)
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--kill", type=int)
    ap.add_argument("--replica", type=int)
    ap.add_argument("--stable", type=float, default=2.0)
    ap.add_argument("--poll-ms", type=float, default=50)
    a = ap.parse_args()
    urls = a.urls.split(",")
    for u in urls:
        if not u.startswith("127."):
            sys.exit(f"{u}: loopback only")
    t0 = time.monotonic()
    if a.mode == "failover":
        os.kill(a.kill, signal.SIGKILL)
    first_degraded = last_degraded = exact_since = promoted = None
    wrong = polls = 0
    answers = []
    while True:
        now = time.monotonic() - t0
        answers = [stats(u) for u in urls]
        polls += 1
        if any(s.get("degraded") or "error" in s for s in answers):
            if first_degraded is None:
                first_degraded = now
            last_degraded = time.monotonic() - t0
        wrong += sum(
            1 for s in answers if "error" not in s and not s.get("degraded") and not exact(s, a.sockets, a.nodes)
        )
        if all(exact(s, a.sockets, a.nodes) for s in answers):
            if exact_since is None:
                exact_since = now
            if a.mode == "exact" or time.monotonic() - t0 - exact_since >= a.stable:
                break
        else:
            exact_since = None
        if a.replica and promoted is None and role_is_master(a.replica):
            promoted = time.monotonic() - t0
        if time.monotonic() - t0 > a.timeout:
            break
        time.sleep(a.poll_ms / 1000)
    r3 = lambda x: None if x is None else round(x, 3)
    out = {
        "mode": a.mode,
        "expected_sockets": a.sockets,
        "nodes": a.nodes,
        "polls": polls,
        "exact": exact_since is not None,
        "exact_after_s": r3(exact_since),
        "answers": [brief(s) for s in answers],
    }
    if a.mode == "failover":
        out.update(
            {
                "killed_pid": a.kill,
                "first_degraded_s": r3(first_degraded),
                "degraded_until_s": r3(last_degraded),
                "replica_promoted_s": r3(promoted),
                "wrong_answers": wrong,
            }
        )
    print(json.dumps(out))
    return 0 if exact_since is not None else 1


if __name__ == "__main__":
    sys.exit(main())
