//! `bench churn`: connect/join/leave/close cycles, some ending abruptly;
//! the server's counts must return to the baseline.

use super::measure::{counts_until, quiet_counts, Cpu};
use super::pool::{bar, shares, specs_for, Pool};
use super::report::{cpu_line, lat_line, per_s, round3};
use crate::hist::Hist;
use crate::worker::{Command, Kind};
use crate::{BenchArgs, BenchError, Endpoint};
use indicatif::ProgressBar;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub(super) async fn run(args: &BenchArgs, ep: &Endpoint) -> Result<Value, BenchError> {
    let workers = if args.workers > 0 { args.workers } else { 1 };
    let base = quiet_counts(ep).await?;
    let mut specs = specs_for(args, ep, Kind::Churn, 0, workers);
    for (i, (_, c)) in shares(args.cycles as usize, workers)
        .into_iter()
        .enumerate()
    {
        specs[i].cycles = c as u64;
        specs[i].first = i;
    }
    let mut pool = Pool::start(specs).await?;
    pool.ready(&ProgressBar::hidden()).await?;
    let cpu = Cpu::now(args, &pool);
    pool.send_all(|| Command::Go);
    let pb = bar(args.cycles, "cycles");
    let outcomes = pool.done(&pb, None).await?;
    pb.finish_and_clear();
    let ops_all: u64 = outcomes.iter().map(|o| o.ops).sum();
    let secs_all = outcomes
        .iter()
        .map(|o| o.elapsed_us as f64 / 1e6)
        .fold(0.0, f64::max);
    let cpu = cpu.since(args, &pool, ops_all, secs_all);
    let mut lat = Hist::default();
    let (mut cycles, mut ops, mut secs) = (0, 0, 0f64);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for o in &outcomes {
        lat.merge(&Hist::from_wire(&o.latency));
        cycles += o.cycles;
        ops += o.ops;
        secs = secs.max(o.elapsed_us as f64 / 1e6);
        for (k, v) in &o.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
    }
    let (after, settled, settle_s) =
        counts_until(ep, Duration::from_secs(15), |c| *c == base).await?;
    let topic_drift: i64 = base
        .by_topic
        .keys()
        .chain(after.by_topic.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|t| {
            (after.by_topic.get(t).copied().unwrap_or(0) as i64
                - base.by_topic.get(t).copied().unwrap_or(0) as i64)
                .abs()
        })
        .sum();
    Ok(json!({
        "scenario": "churn",
        "url": args.url[0],
        "workers": workers,
        "concurrency_per_worker": args.concurrency,
        "topics": args.topics,
        "joins_per_cycle": args.topics_per_socket.max(1),
        "abrupt_every": args.abrupt_every,
        "cycles": cycles,
        "failed_cycles": failures.values().sum::<u64>(),
        "failures": failures,
        "operations": ops,
        "seconds": round3(secs),
        "cycles_per_s": per_s(cycles, secs),
        "ops_per_s": per_s(ops, secs),
        "cycle_latency": lat.summary(),
        "baseline": {"connections": base.connections, "sockets": base.sockets, "topics": base.by_topic.len()},
        "after": {"connections": after.connections, "sockets": after.sockets, "topics": after.by_topic.len()},
        "cpu_per_op": cpu,
        "returned_to_baseline": settled,
        "settle_s": round3(settle_s),
        "drift": {
            "connections": after.connections as i64 - base.connections as i64,
            "sockets": after.sockets as i64 - base.sockets as i64,
            "per_topic_abs": topic_drift,
        },
    }))
}

/// The human summary's lines for this report.
pub(super) fn summary(r: &Value, line: &mut impl FnMut(String)) {
    line(format!(
        "churn: {} cycles ({} failed), {} operations in {} s → {} cycles/s, {} ops/s",
        r["cycles"],
        r["failed_cycles"],
        r["operations"],
        r["seconds"],
        r["cycles_per_s"],
        r["ops_per_s"]
    ));
    if r["failed_cycles"].as_u64().unwrap_or(0) > 0 {
        line(format!("  failures: {}", r["failures"]));
    }
    line(format!("  cycle {}", lat_line(&r["cycle_latency"])));
    line(cpu_line(&r["cpu_per_op"], "op"));
    line(format!(
        "  baseline {}  after {}  returned to baseline: {} (in {} s), drift {}",
        r["baseline"], r["after"], r["returned_to_baseline"], r["settle_s"], r["drift"]
    ));
}
