//! `bench webhooks` (SPEC §10): are occupancy webhooks delivered once per
//! transition, and how soon?
//!
//! The bench runs the receiver itself (`receiver`, on `--receiver-bind`)
//! and prints its URL for the nodes' `--webhook-url`. Over `--duration` s,
//! each of `--topics` topics of this run (`PREFIX wh-<pid>-<i>`) is joined
//! by one socket on a random node and left `--hold` s after its join reply
//! (`plan`; actors from `super::actor`, a few requests per second each).
//! The join reply is the `channel_occupied` transition; the leave reply
//! plus `--webhook-vacate-delay-ms` is the `channel_vacated` one (with
//! `--presence`, each topic's socket joins with `user_id` `w<i>`, and
//! `member_added` / `member_removed` are expected alike). Once every
//! topic is done, the run waits until every transition has its event or
//! 5 s past the last one's time, then matches events to transitions
//! (`ledger`): per name expected, delivered, lost, doubled, unexpected,
//! latency from the transition; redeliveries, foreign events, bad
//! signatures and bodies.

mod ledger;
mod plan;
mod receiver;
mod summary;
mod topics;

pub(super) use summary::summary;

use super::actor::{self, Pushes};
use super::failed;
use super::presence::node::{presence_stats, Kept};
use super::report::round3;
use crate::client::Ws;
use crate::{loopback_addr, BenchArgs, BenchError, Endpoint};
use ledger::Ledger;
use plan::{actors_per_node, join_at, Assign, MAX_ACTORS};
use receiver::{lock, Receiver};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use topics::Run;

/// An event not in by this long after its transition's time is lost.
const WINDOW: Duration = Duration::from_secs(5);

pub(super) fn check(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |what: &str| Err(BenchError::Usage(what.to_string()));
    if args.webhook_secret.as_deref().unwrap_or("").is_empty() {
        return bad("webhooks: --webhook-secret is required (the nodes' --webhook-secret)");
    }
    if args.topics == 0 || args.topics > 100_000 {
        return bad("webhooks: --topics 1 to 100,000");
    }
    if args.duration <= 0.0 {
        return bad("webhooks: --duration must be more than 0");
    }
    if args.hold < 0.0 {
        return bad("webhooks: --hold must be 0 or more");
    }
    if args.webhook_vacate_delay_ms > 600_000 {
        return bad("webhooks: --webhook-vacate-delay-ms at most 600,000");
    }
    if args.token_secret.is_some() {
        return bad("webhooks: no --token-secret (its sockets connect without tokens)");
    }
    let per_node = actors_per_node(args.topics, args.duration, args.hold, args.url.len());
    if per_node * args.url.len().max(1) > MAX_ACTORS {
        return bad("webhooks: too many topics for that --duration and --hold (over 2,000 sockets): lengthen --duration or shorten --hold");
    }
    Ok(())
}

pub(super) async fn run(args: &BenchArgs, eps: &[Endpoint]) -> Result<Value, BenchError> {
    let nodes = eps.len();
    let bind = loopback_addr("--receiver-bind", &args.receiver_bind).await?;
    let secret = args.webhook_secret.clone().unwrap_or_default();
    let ours = format!("{}wh-{}-", args.topic_prefix, std::process::id());
    let ledger = Arc::new(Mutex::new(Ledger::new(&ours)));
    let receiver = Receiver::start(bind, secret, ledger.clone())
        .await
        .map_err(|e| failed(format!("--receiver-bind {bind}: {e}")))?;
    eprintln!(
        "webhooks: receiver on {url} (nodes: --webhook-url {url} --webhook-secret <secret> --webhook-vacate-delay-ms {})",
        args.webhook_vacate_delay_ms,
        url = receiver.url()
    );
    if args.presence && presence_stats(&eps[0], &format!("{ours}0")).await == Kept::No {
        return Err(failed(format!(
            "--presence: {ours}0 is not a presence topic on {} (start the nodes with --presence-topic '{}*')",
            eps[0].host, args.topic_prefix
        )));
    }
    let heartbeat = Duration::from_millis(args.heartbeat_ms.max(1000));
    let per_node = actors_per_node(args.topics, args.duration, args.hold, nodes);
    let (answer_tx, mut answers) = mpsc::unbounded_channel();
    let pushes = Arc::new(Pushes::default());
    let mut tasks = JoinSet::new();
    let mut orders = Vec::with_capacity(per_node * nodes);
    for (n, ep) in eps.iter().enumerate() {
        for k in 0..per_node {
            let ws = Ws::connect(&ep.target(), None)
                .await
                .map_err(|e| failed(format!("actor on {}: {e}", ep.host)))?;
            let id = n * per_node + k;
            orders.push(actor::spawn(
                id,
                ws,
                answer_tx.clone(),
                pushes.clone(),
                heartbeat,
                &mut tasks,
            ));
        }
    }
    drop(answer_tx);
    let t = args.topics;
    let mut run = Run::new(
        &ours,
        args.presence,
        Duration::from_secs_f64(args.hold),
        Duration::from_millis(args.webhook_vacate_delay_ms),
        t,
        orders,
        Assign::new(nodes, per_node, 0x5eb_u64 ^ t as u64),
        ledger.clone(),
    );
    let start = Instant::now();
    let mut next = 0usize;
    while run.open > 0 {
        let next_join = (next < t).then(|| start + join_at(next, t, args.duration));
        let next_leave = run.leaves.peek().map(|r| r.0 .0);
        let wake = [next_join, next_leave]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                while next < t && start + join_at(next, t, args.duration) <= now {
                    run.join(next);
                    next += 1;
                }
                while let Some(Reverse((due, i))) = run.leaves.peek().copied() {
                    if due > now {
                        break;
                    }
                    run.leaves.pop();
                    run.leave(i);
                }
            }
            a = answers.recv() => match a {
                Some(a) => run.answer(a),
                None => break,
            },
        }
    }
    let schedule_s = start.elapsed().as_secs_f64();
    // Every transition's event, or 5 s past the last transition.
    let wait_start = Instant::now();
    let until = run.last_due.map_or(wait_start, |d| d + WINDOW);
    while !lock(&ledger).all_delivered() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited_s = wait_start.elapsed().as_secs_f64();
    let report = lock(&ledger).report();
    let url = receiver.url();
    drop(receiver);
    run.orders.clear();
    let closing = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    Ok(json!({
        "scenario": "webhooks",
        "urls": args.url,
        "nodes": nodes,
        "receiver": url,
        "topics": t,
        "channels": format!("{ours}<i>"),
        "duration_s": args.duration,
        "hold_s": args.hold,
        "vacate_delay_ms": args.webhook_vacate_delay_ms,
        "presence": args.presence,
        "actors": {"per_node": per_node, "total": per_node * nodes},
        "schedule": {
            "seconds": round3(schedule_s),
            "tally": run.tally,
        },
        "waited_s": round3(waited_s),
        "webhooks": report,
    }))
}
