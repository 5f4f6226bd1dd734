//! `bench query`: the latency and rate of stats queries (get_local_stats,
//! get_cluster_stats, with the `limit`/`prefix` filters of SPEC §7.3) or of
//! get_occupancy (SPEC §7.2) while K topics are populated, the bytes of the
//! replies, and whether the counts in them are exact. Error replies are
//! counted by reason, `rate limited` apart.

use super::measure::{counts, quiet_counts, Cpu, NO_STATS};
use super::pool::{bar, query_event, specs_for, stats_filters, worker_count, Pool};
use super::report::{cpu_line, lat_line, per_s, round3};
use crate::hist::Hist;
use crate::http::Http;
use crate::worker::{Command, Kind};
use crate::{BenchArgs, BenchError, Endpoint, QueryEvent};
use serde_json::{json, Value};

pub(super) async fn run(args: &BenchArgs, ep: &Endpoint) -> Result<Value, BenchError> {
    let k = args.topics;
    let per = if args.topics_per_socket <= 1 {
        100
    } else {
        args.topics_per_socket
    };
    let populating = k.div_ceil(per);
    let workers = worker_count(args, populating);
    let mut specs = specs_for(args, ep, Kind::Query, populating, workers);
    for s in &mut specs {
        s.topics_per_socket = per;
    }
    specs[0].query_sockets = args.askers.max(1);
    let base = quiet_counts(ep).await?;
    let mut pool = Pool::start(specs).await?;
    let open = pool.opened(populating as u64, "populate").await?;
    let populated = counts(ep).await?;
    // The size of the whole stats map (`GET /api/stats`), as earlier
    // reports gave it; the replies' own size is `reply_bytes_mean`.
    let stats_bytes = match populated {
        Some(_) => Http::new(ep.addr)
            .request("GET", "/api/stats", None)
            .await
            .ok()
            .map(|(_, b)| b.len()),
        None => None,
    };
    let cpu = Cpu::now(args, &pool);
    pool.send_all(|| Command::Go);
    let pb = bar(
        args.queries
            .unwrap_or(1_000_000)
            .min((args.duration * 50_000.0) as u64),
        "queries",
    );
    let outcomes = pool.done(&pb, None).await?;
    pb.finish_and_clear();
    let cpu = cpu.since(
        args,
        &pool,
        outcomes[0].answered,
        outcomes[0].elapsed_us as f64 / 1e6,
    );
    pool.send_all(|| Command::Stop);
    let o = &outcomes[0];
    let lat = Hist::from_wire(&o.latency);
    let secs = o.elapsed_us as f64 / 1e6;
    let stats_event = args.event != QueryEvent::Occupancy;
    // Every populated topic and every asker's patterns:stats membership.
    let (expected, seen, exact) = match (&base, &populated) {
        (Some(base), Some(populated)) => {
            let expected = base.connections + k as u64 + args.askers.max(1) as u64;
            let in_replies = !stats_event || o.last_connection_count == expected;
            (
                Some(expected),
                Some(populated.connections),
                Some(populated.connections == expected && in_replies),
            )
        }
        _ => (None, None, None),
    };
    Ok(json!({
        "scenario": "query",
        "url": args.url[0],
        "event": query_event(args.event),
        "payload": if stats_event { stats_filters(args) } else { json!({"topics": args.topics_per_query}) },
        "topics": k,
        "topics_seen_by_server": populated.as_ref().map(|p| p.by_topic.len()),
        "server_stats": if base.is_some() { Value::Null } else { Value::from(NO_STATS) },
        "populating_sockets": populating,
        "askers": args.askers.max(1),
        "populate": open,
        "connection_count_expected": expected,
        "connection_count_seen": seen,
        "connection_count_in_replies": stats_event.then_some(o.last_connection_count),
        "counts_exact": exact,
        "reply_check": o.reply_check,
        "answered": o.answered,
        "errors": o.errors,
        "error_reasons": o.error_reasons,
        "rate_limited": o.rate_limited,
        "stats_bytes": stats_bytes,
        "reply_bytes_mean": o.reply_bytes.checked_div(o.answered).unwrap_or(0),
        "seconds": round3(secs),
        "queries_per_s": per_s(o.answered, secs),
        "latency": lat.summary(),
        "cpu_per_query": cpu,
    }))
}

/// The human summary's lines for this report.
pub(super) fn summary(r: &Value, line: &mut impl FnMut(String)) {
    line(format!(
        "query: {} {} with {} topics ({} seen), {} asker(s)",
        r["event"].as_str().unwrap_or(""),
        r["payload"],
        r["topics"],
        r["topics_seen_by_server"],
        r["askers"]
    ));
    line(format!(
        "  {} answers in {} s → {} queries/s, reply {} bytes (mean)",
        r["answered"], r["seconds"], r["queries_per_s"], r["reply_bytes_mean"]
    ));
    line(format!(
        "  errors {} {}, rate limited {}",
        r["errors"], r["error_reasons"], r["rate_limited"]
    ));
    line(format!("  latency {}", lat_line(&r["latency"])));
    line(cpu_line(&r["cpu_per_query"], "query"));
    line(format!("  sampled reply: {}", r["reply_check"]));
    if r["counts_exact"].is_null() {
        line(format!("  {}", r["server_stats"].as_str().unwrap_or("")));
    } else {
        line(format!(
            "  connection_count expected {} seen {} in replies {} (exact: {})",
            r["connection_count_expected"],
            r["connection_count_seen"],
            r["connection_count_in_replies"],
            r["counts_exact"]
        ));
    }
}
