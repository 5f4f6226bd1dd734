//! `bench churn`: connect/join/leave/close cycles, some ending abruptly;
//! the server's counts must return to the baseline (checked when the
//! target has headcount's `/api/stats`).

use super::measure::{counts_until, quiet_counts, Cpu, NO_STATS};
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
    let settle = match &base {
        Some(base) => counts_until(ep, Duration::from_secs(15), |c| c == base).await?,
        None => None,
    };
    let rate_limited: u64 = failures
        .iter()
        .filter(|(k, _)| k.contains(crate::client::RATE_LIMITED))
        .map(|(_, v)| v)
        .sum();
    let (baseline, after, settled, settle_s, drift) = match (&base, settle) {
        (Some(base), Some((after, settled, settle_s))) => {
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
            (
                json!({"connections": base.connections, "sockets": base.sockets, "topics": base.by_topic.len()}),
                json!({"connections": after.connections, "sockets": after.sockets, "topics": after.by_topic.len()}),
                Value::from(settled),
                Value::from(round3(settle_s)),
                json!({
                    "connections": after.connections as i64 - base.connections as i64,
                    "sockets": after.sockets as i64 - base.sockets as i64,
                    "per_topic_abs": topic_drift,
                }),
            )
        }
        _ => (
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ),
    };
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
        "rate_limited": rate_limited,
        "operations": ops,
        "seconds": round3(secs),
        "cycles_per_s": per_s(cycles, secs),
        "ops_per_s": per_s(ops, secs),
        "cycle_latency": lat.summary(),
        "baseline": baseline,
        "after": after,
        "cpu_per_op": cpu,
        "server_stats": if base.is_some() { Value::Null } else { Value::from(NO_STATS) },
        "returned_to_baseline": settled,
        "settle_s": settle_s,
        "drift": drift,
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
        line(format!(
            "  failures: {} (rate limited: {})",
            r["failures"], r["rate_limited"]
        ));
    }
    line(format!("  cycle {}", lat_line(&r["cycle_latency"])));
    line(cpu_line(&r["cpu_per_op"], "op"));
    if r["returned_to_baseline"].is_null() {
        line(format!("  {}", r["server_stats"].as_str().unwrap_or("")));
    } else {
        line(format!(
            "  baseline {}  after {}  returned to baseline: {} (in {} s), drift {}",
            r["baseline"], r["after"], r["returned_to_baseline"], r["settle_s"], r["drift"]
        ));
    }
}
