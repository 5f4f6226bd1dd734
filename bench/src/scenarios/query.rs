//! `bench query`: the latency and rate of stats queries while K topics are
//! populated, and whether the counts in the replies are exact.

use super::measure::{counts, quiet_counts, Cpu};
use super::pool::{bar, specs_for, worker_count, Pool};
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
    let expected = base.connections + k as u64 + args.askers.max(1) as u64;
    let topics_seen = populated.by_topic.len();
    let body_bytes = Http::new(ep.addr)
        .request("GET", "/api/stats", None)
        .await
        .map(|(_, b)| b.len())
        .unwrap_or(0);
    let cpu = Cpu::now(args, &pool);
    pool.send_all(|| Command::Go);
    let pb = bar(
        args.queries.min((args.duration * 50_000.0) as u64),
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
    Ok(json!({
        "scenario": "query",
        "url": args.url[0],
        "event": match args.event { QueryEvent::Local => "get_local_stats", QueryEvent::Cluster => "get_cluster_stats" },
        "topics": k,
        "topics_seen_by_server": topics_seen,
        "populating_sockets": populating,
        "askers": args.askers.max(1),
        "populate": open,
        "connection_count_expected": expected,
        "connection_count_seen": populated.connections,
        "connection_count_in_replies": o.last_connection_count,
        "counts_exact": populated.connections == expected && o.last_connection_count == expected,
        "stats_bytes": body_bytes,
        "answered": o.answered,
        "errors": o.errors,
        "seconds": round3(secs),
        "queries_per_s": per_s(o.answered, secs),
        "latency": lat.summary(),
        "cpu_per_query": cpu,
    }))
}

/// The human summary's lines for this report.
pub(super) fn summary(r: &Value, line: &mut impl FnMut(String)) {
    line(format!(
        "query: {} with {} topics ({} seen), {} asker(s)",
        r["event"], r["topics"], r["topics_seen_by_server"], r["askers"]
    ));
    line(format!(
        "  {} answers in {} s → {} queries/s, errors {}, reply ~{} bytes",
        r["answered"], r["seconds"], r["queries_per_s"], r["errors"], r["stats_bytes"]
    ));
    line(format!("  latency {}", lat_line(&r["latency"])));
    line(cpu_line(&r["cpu_per_query"], "query"));
    line(format!(
        "  connection_count expected {} seen {} in replies {} (exact: {})",
        r["connection_count_expected"],
        r["connection_count_seen"],
        r["connection_count_in_replies"],
        r["counts_exact"]
    ));
}
