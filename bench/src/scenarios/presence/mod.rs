//! `bench presence` (SPEC §9): what presence costs and how fast it moves.
//!
//! 0. The presence topic (`--presence-topic`, default PREFIX + "presence")
//!    must keep presence on the first node (`/api/presence/stats`).
//! 1. With `--server-pid`: the plain phase of the memory comparison
//!    (`memory`): N sockets on a plain topic, RSS read, closed.
//! 2. N members join the presence topic, member i on node i mod n with
//!    `user_id` `u<i>` (`members`); the run waits until every node counts
//!    N users, then (once steady, `--settle` s later at least) reads the
//!    RSS again.
//! 3. On the quiet first node, a probe times its join to its
//!    `presence_state` (`probe`): the encode time's upper bound, the size.
//! 4. Churn phase, `--duration` s: churners on the first node join (fresh
//!    key each time) and leave at `--rate` per second (`churn`). Measured:
//!    `presence_diff` pushes received by the members per second, the nodes'
//!    CPU (utime + stime of `--server-pid`) per delivered diff, and the
//!    propagation of each change to the observers of the other nodes (or
//!    of the node, with one `--url`): p50/p99/max, lost after 5 s (`book`).
//! 5. Drain, then the truth check: every node counts the members and the
//!    churners still joined, as users and connections.

mod book;
mod churn;
mod members;
mod memory;
pub(super) mod node;
mod probe;
mod summary;

pub(super) use summary::summary;

use super::actor::{self, Pushes};
use super::churning::Phase;
use super::failed;
use super::report::round3;
use crate::client::Ws;
use crate::hist::Hist;
use crate::{cpu_seconds, BenchArgs, BenchError, Endpoint};
use book::Book;
use churn::{Churn, Churner, PER_CHURNER};
use members::Counters;
use node::Kept;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Every churner key starts with this (members are `u<i>`, probes `probe-<k>`).
pub(super) const CHURN_KEY: &str = "c";
const DEFAULT_RATE: f64 = 10.0;
/// How long the nodes may take to count every member.
const CONVERGE: Duration = Duration::from_secs(10);

pub(super) fn check(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |what: &str| Err(BenchError::Usage(what.to_string()));
    if args.sockets == 0 || args.sockets > 15_000 {
        return bad("presence: --sockets 1 to 15,000 (one process holds them all)");
    }
    if args.rate < 0.0 || args.rate > 10_000.0 {
        return bad("presence: --rate 0 to 10,000 joins+leaves per second");
    }
    if args.duration <= 0.0 {
        return bad("presence: --duration must be more than 0");
    }
    if !(1..=100).contains(&args.probes) {
        return bad("presence: --probes 1 to 100");
    }
    if args.server_pid.len() > 1 && args.server_pid.len() != args.url.len() {
        return bad("presence: --server-pid takes one pid, or one per --url");
    }
    if args.token_secret.is_some() {
        return bad("presence: no --token-secret (the members' keys are their user_id)");
    }
    Ok(())
}

fn topic(args: &BenchArgs) -> String {
    args.presence_topic
        .clone()
        .unwrap_or_else(|| format!("{}presence", args.topic_prefix))
}

fn plain_topic(args: &BenchArgs) -> String {
    args.plain_topic
        .clone()
        .unwrap_or_else(|| format!("{}plain", args.topic_prefix))
}

pub(super) async fn run(args: &BenchArgs, eps: &[Endpoint]) -> Result<Value, BenchError> {
    let nodes = eps.len();
    let topic = topic(args);
    let heartbeat = Duration::from_millis(args.heartbeat_ms.max(1000));
    let pids = node::pids(args, nodes);
    let with_pids = pids.iter().any(Option::is_some);
    let not_presence = || {
        failed(format!(
            "{topic} is not a presence topic on {} (start the node(s) with --allow-topic and --presence-topic matching it, e.g. --presence-topic '{}*')",
            eps[0].host, args.topic_prefix
        ))
    };
    if node::presence_stats(&eps[0], &topic).await == Kept::No {
        return Err(not_presence());
    }
    let rss_before = node::rss_all(&pids);

    // 1. The plain phase.
    let plain = if with_pids {
        Some(memory::plain_phase(args, eps, &plain_topic(args), &pids).await)
    } else {
        None
    };

    // 2. Members.
    let counters = Arc::new(Counters::new(nodes));
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let m = members::open(args, eps, &topic, true, &counters, Some(seen_tx)).await;
    if m.opened == 0 {
        let errors = m.report["errors"].to_string();
        m.close().await;
        if errors.contains("presence_state") {
            return Err(not_presence());
        }
        return Err(failed(format!("no member could join {topic}: {errors}")));
    }
    let (converged, converge_s) = node::converge(eps, &topic, m.opened as u64, CONVERGE).await;
    let (rss_presence, rss_waited) = if with_pids {
        node::steady_rss(&pids, args.settle).await
    } else {
        (node::rss_all(&pids), 0.0)
    };
    let memory = match &plain {
        None => json!({"skipped": "no --server-pid"}),
        Some(Err(why)) => json!({"skipped": why}),
        Some(Ok(p)) => {
            let mut r = memory::compare(&rss_before, &p.rss, &rss_presence, &m.per_node);
            r["plain"] = p.report.clone();
            r["rss_read_after_s"] = json!(rss_waited);
            r
        }
    };

    // 3. presence_state on the quiet first node.
    let state = probe::run(&eps[0], &topic, args.probes)
        .await
        .map_err(failed)?;

    // 4. Churn.
    let watched: Vec<usize> = if nodes > 1 {
        m.observed.iter().copied().filter(|n| *n != 0).collect()
    } else {
        m.observed.clone()
    };
    let rate = if args.rate > 0.0 {
        args.rate
    } else {
        DEFAULT_RATE
    };
    let churner_count = ((rate / PER_CHURNER).ceil() as usize).clamp(1, 1000);
    let (answer_tx, answer_rx) = mpsc::unbounded_channel();
    let pushes = Arc::new(Pushes::default());
    let mut tasks = JoinSet::new();
    let mut churners = Vec::with_capacity(churner_count);
    for c in 0..churner_count {
        let ws = Ws::connect(&eps[0].target(), None)
            .await
            .map_err(|e| failed(format!("churner on {}: {e}", eps[0].host)))?;
        let tx = actor::spawn(
            c,
            ws,
            answer_tx.clone(),
            pushes.clone(),
            heartbeat,
            &mut tasks,
        );
        churners.push(Churner::new(tx));
    }
    let mut churn = Churn::new(Book::new(watched), churners, &topic);
    let cpu0 = node::cpu_all(&pids);
    let client0 = cpu_seconds(None).unwrap_or(0.0);
    let diffs0 = counters.diffs();
    let bytes0 = counters.diff_bytes.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut phase = Phase::new(seen_rx, answer_rx);
    phase.churn(&mut churn, start, rate, args.duration).await;
    let churn_s = start.elapsed().as_secs_f64();
    let cpu1 = node::cpu_all(&pids);
    let client_s = cpu_seconds(None).unwrap_or(0.0) - client0;
    let diffs: Vec<u64> = counters
        .diffs()
        .iter()
        .zip(&diffs0)
        .map(|(a, b)| a - b)
        .collect();
    let diff_bytes = counters.diff_bytes.load(Ordering::Relaxed) - bytes0;

    // 5. Drain, the truth check, close.
    phase.drain(&mut churn).await;
    let gone = counters.gone.load(Ordering::Relaxed);
    let expect = (m.opened as u64).saturating_sub(gone) + churn.holding();
    let (exact, _) = node::converge(eps, &topic, expect, Duration::from_secs(3)).await;
    // What each node counted last, to tell a slow node from a wrong one.
    let mut counted = Vec::new();
    for ep in eps {
        counted.push(match node::presence_stats(ep, &topic).await {
            node::Kept::Yes { connections, users } => {
                json!({"connections": connections, "users": users})
            }
            _ => Value::Null,
        });
    }
    churn.churners.clear();
    let members_report = m.report.clone();
    m.close().await;
    let closing = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;

    let b = &churn.book;
    let mut all = Hist::default();
    all.merge(&b.joins);
    all.merge(&b.leaves);
    let deliveries: u64 = diffs.iter().sum();
    let cpu = cpu_report(&cpu0, &cpu1, &diffs, churn_s);
    Ok(json!({
        "scenario": "presence",
        "urls": args.url,
        "nodes": nodes,
        "topic": topic,
        "sockets": args.sockets,
        "members": members_report,
        "converged": {"ok": converged, "seconds": round3(converge_s)},
        "state": state,
        "churn": {
            "rate_target": rate,
            "seconds": round3(churn_s),
            "churners": churner_count,
            "on": eps[0].host,
            "changes": b.changes,
            "changes_per_s": round3(b.changes as f64 / churn_s.max(1e-9)),
            "tally": churn.tally,
        },
        "diffs": {
            "deliveries": deliveries,
            "per_s": round3(deliveries as f64 / churn_s.max(1e-9)),
            "per_node": diffs,
            "bytes_per_delivery": diff_bytes.checked_div(deliveries),
        },
        "churner_pushes": {
            "presence_states": pushes.states.load(Ordering::Relaxed),
            "presence_state_bytes": pushes.state_bytes.load(Ordering::Relaxed),
            "presence_diffs": pushes.diffs.load(Ordering::Relaxed),
        },
        "cpu": {
            "nodes": cpu["nodes"],
            "server_cpu_s": cpu["server_cpu_s"],
            "server_cores": cpu["server_cores"],
            "server_us_per_delivery": cpu["server_us_per_delivery"],
            "client_cpu_s": round3(client_s),
        },
        "propagation": {
            "measured_on": if nodes > 1 { "another node" } else { "the same node (one --url)" },
            "watched_nodes": b.watched(),
            "all": all.summary(),
            "join": b.joins.summary(),
            "leave": b.leaves.summary(),
            "before_reply": b.before_reply,
            "lost": b.flights.lost,
            "unanswered": b.flights.unanswered,
        },
        "truth": {"expected": expect, "exact": exact, "counted": counted},
        "members_gone": gone,
        "memory": memory,
    }))
}

/// The nodes' CPU over the churn phase, per node and per delivered diff
/// (over the nodes whose pid is known, and the deliveries to their members).
fn cpu_report(before: &[Option<f64>], after: &[Option<f64>], diffs: &[u64], secs: f64) -> Value {
    let mut nodes = Vec::new();
    let (mut cpu, mut delivered, mut any) = (0.0, 0u64, false);
    for (i, &was) in before.iter().enumerate() {
        let used = match (was, after.get(i).copied().flatten()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let d = diffs.get(i).copied().unwrap_or(0);
        if let Some(u) = used {
            cpu += u;
            delivered += d;
            any = true;
        }
        nodes.push(json!({
            "cpu_s": used.map(round3),
            "deliveries": d,
            "us_per_delivery": used.and_then(|u| (d > 0).then(|| round1(u * 1e6 / d as f64))),
        }));
    }
    json!({
        "nodes": nodes,
        "server_cpu_s": any.then(|| round3(cpu)),
        "server_cores": (any && secs > 0.0).then(|| round3(cpu / secs)),
        "server_us_per_delivery": (any && delivered > 0).then(|| round1(cpu * 1e6 / delivered as f64)),
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_delivery_counts_the_nodes_with_a_pid() {
        let r = cpu_report(&[Some(1.0), None], &[Some(1.5), None], &[1000, 3000], 2.0);
        assert_eq!(r["server_cpu_s"], 0.5);
        assert_eq!(r["server_cores"], 0.25);
        assert_eq!(r["server_us_per_delivery"], 500.0);
        assert_eq!(r["nodes"][1]["deliveries"], 3000);
        assert!(r["nodes"][1]["cpu_s"].is_null());
        let none = cpu_report(&[None], &[None], &[5], 1.0);
        assert!(none["server_us_per_delivery"].is_null());
    }
}
