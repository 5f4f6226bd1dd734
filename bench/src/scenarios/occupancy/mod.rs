//! `bench occupancy` (SPEC §7.1): how fast a join or leave on one node
//! reaches the `occupancy` pushes of the other nodes, and what it costs.
//!
//! 1. S watchers join T topics with `{"occupancy": true}`, spread over the
//!    `--url` nodes (`members`); the run waits until every observer's last
//!    push shows its topic's count (`converged`).
//! 2. Churn phase, `--duration` seconds: at `--rate` per second a churner
//!    joins or leaves a topic on its node (`churners`, `schedule`); the
//!    push latency of each change is the time from its reply to the first
//!    push on another node that shows the new count (`book`), lost after
//!    5 s. Optionally `--queries` stats queries per second run alongside
//!    (`asking`). Each node's Redis commands per second over the phase come
//!    from its `/metrics`, and Redis's own total from `INFO commandstats`
//!    with `--redis` (`commands`).
//! 3. A drain (changes still in flight get their 5 s) and a quiet check:
//!    does every observer's last push show the final count?

mod asking;
mod book;
mod churners;
mod commands;
mod members;
mod schedule;

use super::churning::{Coordinator, Phase};
use super::failed;
use super::report::{lat_line, round3};
use crate::{BenchArgs, BenchError, Endpoint};
use book::Book;
use schedule::Churn;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Churn events per second one churner makes at most: well inside the
/// default per-socket limits (20 joins/s, 100 messages/s).
const PER_CHURNER: f64 = 10.0;
/// Default `--rate` for this scenario.
const DEFAULT_RATE: f64 = 10.0;
/// How long set-up may take to show every observer its topic's count.
const CONVERGE: Duration = Duration::from_secs(10);
/// With no push at all by then, the target does not push occupancy.
const FIRST_PUSH: Duration = Duration::from_secs(3);
/// How long the quiet check waits for the last pushes.
const QUIET: Duration = Duration::from_secs(3);

pub(super) fn check(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |what: &str| Err(BenchError::Usage(what.to_string()));
    if args.topics == 0 || args.sockets == 0 {
        return bad("occupancy: --sockets and --topics must be at least 1");
    }
    if args.sockets > 15_000 {
        return bad("occupancy: --sockets at most 15,000 (one process holds them all)");
    }
    if args.topics > args.sockets {
        return bad("occupancy: --topics at most --sockets (every topic needs a watcher)");
    }
    if args.rate < 0.0 || args.rate > 10_000.0 {
        return bad("occupancy: --rate 0 to 10,000 changes per second");
    }
    if args.queries.unwrap_or(0) > 10_000 {
        return bad("occupancy: --queries at most 10,000 per second");
    }
    if args.duration <= 0.0 {
        return bad("occupancy: --duration must be more than 0");
    }
    Ok(())
}

pub(super) async fn run(
    args: &BenchArgs,
    eps: &[Endpoint],
    redis: Option<SocketAddr>,
) -> Result<Value, BenchError> {
    let nodes = eps.len();
    let topics = args.topics;
    let heartbeat = Duration::from_millis(args.heartbeat_ms.max(1000));

    // 1. Watchers.
    let (members, opened) = members::open(args, eps).await;
    if members.is_empty() {
        return Err(failed(format!(
            "no watcher could join (start the nodes with --allow-topic '{}*'): {}",
            args.topic_prefix, opened["errors"]
        )));
    }
    let mut book = Book::new(topics, nodes);
    for m in &members {
        book.add_member(m.topic);
    }
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let pushes = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let observers = members::watch_all(members, &seen_tx, &pushes, &stop_rx, heartbeat, &mut tasks);
    for &(t, n) in &observers {
        book.add_observer(t, n);
    }
    let pairs_with_watchers_elsewhere = (0..topics)
        .filter(|t| (0..nodes).filter(|n| observers.contains(&(*t, *n))).count() >= nodes.min(2))
        .count();
    let converge_start = Instant::now();
    while book.stale_observers().0 > 0 && converge_start.elapsed() < CONVERGE {
        if pushes.load(Ordering::Relaxed) == 0 && converge_start.elapsed() > FIRST_PUSH {
            break;
        }
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(100), seen_rx.recv()).await
        {
            apply_seen(&mut book, s);
        }
    }
    let pushes_while_joining = pushes.load(Ordering::Relaxed);
    let (stale_after_join, observer_count) = book.stale_observers();
    let converge_s = converge_start.elapsed().as_secs_f64();

    // 2. Churners, stats askers, the churn phase.
    let rate = if args.rate > 0.0 {
        args.rate
    } else {
        DEFAULT_RATE
    };
    let churner_count = ((rate / PER_CHURNER).ceil() as usize).clamp(nodes, 1000);
    let (answer_tx, answer_rx) = mpsc::unbounded_channel();
    let churners = churners::open(eps, churner_count, &answer_tx, heartbeat, &mut tasks)
        .await
        .map_err(failed)?;
    let queries = args.queries.unwrap_or(0);
    let askers = if queries > 0 {
        asking::open(&eps[0], queries).await.map_err(failed)?
    } else {
        Vec::new()
    };
    let mut churn = Churn::new(
        book,
        churners,
        &observers,
        topics,
        nodes,
        &args.topic_prefix,
    );
    let (ask_stop_tx, ask_stop_rx) = watch::channel(false);
    let before = commands::snapshot(eps, redis).await;
    let pushes_before = pushes.load(Ordering::Relaxed);
    let start = Instant::now();
    let asking = (queries > 0).then(|| tokio::spawn(asking::run(askers, queries, ask_stop_rx)));
    let mut phase = Phase::new(seen_rx, answer_rx);
    phase.churn(&mut churn, start, rate, args.duration).await;
    let churn_s = start.elapsed().as_secs_f64();
    let pushes_during = pushes.load(Ordering::Relaxed) - pushes_before;
    let after = commands::snapshot(eps, redis).await;
    let _ = ask_stop_tx.send(true);
    let asked = match asking {
        Some(h) => Some(h.await.map_err(failed)?),
        None => None,
    };

    // 3. Drain, then the quiet check.
    phase.drain(&mut churn).await;
    let quiet_end = Instant::now() + QUIET;
    while churn.book.stale_observers().0 > 0 && Instant::now() < quiet_end {
        if let Ok(Some(s)) =
            tokio::time::timeout(Duration::from_millis(100), phase.seen.recv()).await
        {
            churn.seen(s);
        }
    }
    let (stale_at_quiet, _) = churn.book.stale_observers();
    let _ = stop_tx.send(true);
    // Dropping the churners' senders ends their tasks, which close their sockets.
    churn.churners.clear();
    let closing = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;

    let b = &churn.book;
    let changes = churn.tally.joins_ok + churn.tally.leaves_ok;
    Ok(json!({
        "scenario": "occupancy",
        "urls": args.url,
        "nodes": nodes,
        "sockets": args.sockets,
        "topics": topics,
        "watchers": opened,
        "observers": observer_count,
        "topics_watched_on_two_nodes": if nodes > 1 { Value::from(pairs_with_watchers_elsewhere) } else { Value::Null },
        "latency_measured_on": if nodes > 1 { "another node" } else { "the same node (one --url)" },
        "converged": {
            "ok": stale_after_join == 0,
            "pushes": pushes_while_joining,
            "stale_observers": stale_after_join,
            "seconds": round3(converge_s),
        },
        "churn": {
            "rate_target": rate,
            "seconds": round3(churn_s),
            "churners": churner_count,
            "changes": changes,
            "changes_per_s": round3(changes as f64 / churn_s.max(1e-9)),
            "tally": churn.tally,
        },
        "push_latency": b.latency.summary(),
        "pushed_before_reply": b.before_reply,
        "lost": b.flights.lost,
        "unanswered": b.flights.unanswered,
        "watchers_gone": b.members_gone,
        "pushes": {
            "received": pushes_during,
            "per_s": round3(pushes_during as f64 / churn_s.max(1e-9)),
        },
        "quiet": {
            "stale_observers": stale_at_quiet,
            "of": observer_count,
        },
        "queries": asked.map(|a| a.report(queries, churn_s)),
        "redis_commands": commands::rates(&args.url, &before, &after),
    }))
}

fn apply_seen(book: &mut Book, s: members::Seen) {
    match s {
        members::Seen::Push {
            topic,
            node,
            count,
            at,
        } => book.push(topic, node, count, at),
        members::Seen::Gone { topic } => book.member_gone(topic),
    }
}

/// The human summary's lines for this report.
pub(super) fn summary(r: &Value, line: &mut impl FnMut(String)) {
    let w = &r["watchers"];
    line(format!(
        "occupancy: {} node(s), {} watchers over {} topics ({} opened, {} failed), {} observers",
        r["nodes"], r["sockets"], r["topics"], w["opened"], w["failed"], r["observers"]
    ));
    if w["failed"].as_u64().unwrap_or(0) > 0 {
        line(format!("  watcher errors: {}", w["errors"]));
    }
    let c = &r["converged"];
    if c["pushes"].as_u64() == Some(0) {
        line("  after joining: no occupancy push at all (does the target push occupancy?)".into());
    } else {
        line(format!(
            "  after joining: every observer shows its count: {} ({} stale, {} pushes, {} s)",
            c["ok"], c["stale_observers"], c["pushes"], c["seconds"]
        ));
    }
    let ch = &r["churn"];
    let t = &ch["tally"];
    line(format!(
        "  churn: {} changes in {} s ({}/s, target {}/s) by {} churners; skipped ticks {}, rate limited {}, refused {}, churner errors {}",
        ch["changes"], ch["seconds"], ch["changes_per_s"], ch["rate_target"], ch["churners"],
        t["skipped"], t["rate_limited"], t["refused"], t["churner_errors"]
    ));
    line(format!(
        "  push latency (reply → first push on {}): {}",
        r["latency_measured_on"].as_str().unwrap_or(""),
        lat_line(&r["push_latency"])
    ));
    line(format!(
        "  lost (not reflected within 5 s) {}, unanswered {}, pushed before the reply {}, watchers gone {}",
        r["lost"], r["unanswered"], r["pushed_before_reply"], r["watchers_gone"]
    ));
    line(format!(
        "  pushes received {} ({}/s); at quiet {} of {} observers stale",
        r["pushes"]["received"],
        r["pushes"]["per_s"],
        r["quiet"]["stale_observers"],
        r["quiet"]["of"]
    ));
    if let Some(q) = r["queries"].as_object() {
        line(format!(
            "  stats queries: {} answered ({}/s, target {}/s), {}, rate limited {}, errors {}",
            q["answered"],
            q["per_s"],
            q["target_per_s"],
            lat_line(&q["latency"]),
            q["rate_limited"],
            q["errors"]
        ));
    }
    let rc = &r["redis_commands"];
    let per_node: Vec<String> = rc["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    format!(
                        "{} {}",
                        n["url"].as_str().unwrap_or(""),
                        commands::per_s_text(&n["per_s"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    line(format!(
        "  Redis commands ({}): {}; Redis INFO total {}{}",
        rc["metric"].as_str().unwrap_or(""),
        per_node.join(", "),
        commands::per_s_text(&rc["redis_info_per_s"]),
        rc["redis_error"]
            .as_str()
            .map_or(String::new(), |e| format!(" ({e})"))
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_run_reads_as_such() {
        let r = json!({
            "nodes": 2, "sockets": 0, "topics": 1, "observers": 0,
            "watchers": {"opened": 0, "failed": 0, "errors": {}},
            "converged": {"ok": true, "stale_observers": 0, "pushes": 0, "seconds": 0.0},
            "churn": {"changes": 0, "seconds": 1.0, "changes_per_s": 0.0, "rate_target": 10.0,
                      "churners": 2, "tally": {"skipped": 10, "rate_limited": 0, "refused": {}, "churner_errors": {}}},
            "latency_measured_on": "another node",
            "push_latency": Book::new(1, 2).latency.summary(),
            "lost": 0, "unanswered": 0, "pushed_before_reply": 0, "watchers_gone": 0,
            "pushes": {"received": 0, "per_s": 0.0},
            "quiet": {"stale_observers": 0, "of": 0},
            "queries": null,
            "redis_commands": {"metric": commands::METRIC, "nodes": [
                {"url": "127.0.0.1:1", "per_s": null}, {"url": "127.0.0.1:2", "per_s": 3.5}],
                "redis_info_per_s": null, "redis_error": null},
        });
        let mut out = Vec::new();
        summary(&r, &mut |l| out.push(l));
        let text = out.join("\n");
        assert!(text.contains("0 changes"), "{text}");
        assert!(text.contains("no occupancy push at all"), "{text}");
        assert!(text.contains("n=0"), "{text}");
        assert!(
            text.contains("127.0.0.1:1 n/a, 127.0.0.1:2 3.5/s"),
            "{text}"
        );
        assert!(text.contains("Redis INFO total n/a"), "{text}");
        assert!(!text.contains("stats queries"), "{text}");
    }
}
