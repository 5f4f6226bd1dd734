//! `bench cluster`: how long a join on one node takes to appear in another
//! node's cluster stats, and its leave to disappear.

use super::failed;
use super::pool::bar;
use super::report::lat_line;
use crate::client::Ws;
use crate::hist::Hist;
use crate::worker;
use crate::{BenchArgs, BenchError, Endpoint};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A request on `patterns:stats` (joined with join_ref "0"); returns the
/// reply's `response` and consumes the push that follows an ok reply.
/// An error reply (`rate limited` when the node's per-socket limits are
/// not raised) is `Err` with its reason; it has no push.
async fn ask(
    ws: &mut Ws,
    n: u64,
    event: &str,
    push: &str,
) -> Result<Result<Value, String>, BenchError> {
    let reference = format!("c{n}");
    ws.send_text(&format!(
        "[\"0\",\"{reference}\",\"patterns:stats\",\"{event}\",{{}}]"
    ))
    .await
    .map_err(failed)?;
    let v = ws
        .await_reply_with(&reference, |d| serde_json::from_slice::<Value>(d).ok())
        .await
        .map_err(failed)?
        .ok_or_else(|| failed("unparsable reply"))?;
    if v[4]["status"] != "ok" {
        let reason = v[4]["response"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string();
        return Ok(Err(reason));
    }
    ws.await_event(push).await.map_err(failed)?;
    Ok(Ok(v[4]["response"].clone()))
}

pub(super) async fn run(args: &BenchArgs, eps: &[Endpoint]) -> Result<Value, BenchError> {
    let mut socks = Vec::new();
    let mut names = Vec::new();
    for ep in eps {
        let target = ep.target();
        let (mut ws, _, _) = worker::open_joined(&target, None, &["patterns:stats".into()])
            .await
            .map_err(|e| failed(format!("{}: {e}", ep.host)))?;
        let local = ask(&mut ws, 0, "get_local_stats", "local_stats")
            .await?
            .map_err(|e| failed(format!("{}: get_local_stats refused: {e}", ep.host)))?;
        names.push(local["node"].as_str().unwrap_or("").to_string());
        socks.push(ws);
    }
    let n = socks.len();
    let mut lat = Hist::default();
    let mut leave_lat = Hist::default();
    let (mut missed, mut sizes) = (0u64, BTreeMap::<u64, u64>::new());
    let mut refused = BTreeMap::<String, u64>::new();
    let mut q = 1u64;
    let pb = bar(args.rounds, "rounds");
    let run_id = std::process::id();
    let limit = Duration::from_secs(5);
    let poll = Duration::from_millis(args.poll_ms.max(1));
    for r in 0..args.rounds {
        let origin = (r as usize) % n;
        let observers: Vec<usize> = if n == 1 {
            vec![0]
        } else {
            (0..n).filter(|i| *i != origin).collect()
        };
        let topic = format!("{}cluster-{run_id}-{r}", args.topic_prefix);
        let jr = format!("j{r}");
        let ws = &mut socks[origin];
        ws.send_text(&format!(
            "[\"{jr}\",\"{jr}\",\"{topic}\",\"phx_join\",{{}}]"
        ))
        .await
        .map_err(failed)?;
        if !ws.await_reply(&jr).await.map_err(failed)? {
            return Err(failed(format!(
                "join of {topic} refused (start the nodes with --allow-topic '{}*')",
                args.topic_prefix
            )));
        }
        for present in [true, false] {
            let t0 = Instant::now();
            let mut waiting = observers.clone();
            while !waiting.is_empty() && t0.elapsed() < limit {
                let mut still = Vec::new();
                for &o in &waiting {
                    q += 1;
                    let stats =
                        match ask(&mut socks[o], q, "get_cluster_stats", "cluster_stats").await? {
                            Ok(stats) => stats,
                            Err(reason) => {
                                // Not seen this poll; counted, and asked again.
                                *refused.entry(reason).or_default() += 1;
                                still.push(o);
                                continue;
                            }
                        };
                    if let Some(size) = stats["cluster_size"].as_u64() {
                        *sizes.entry(size).or_default() += 1;
                    }
                    let count = stats["connections_by_topic"][&topic][&names[origin]]
                        .as_u64()
                        .unwrap_or(0);
                    if (count >= 1) == present {
                        let us = t0.elapsed().as_micros() as u64;
                        if present {
                            lat.record(us);
                        } else {
                            leave_lat.record(us);
                        }
                    } else {
                        still.push(o);
                    }
                }
                waiting = still;
                if !waiting.is_empty() {
                    tokio::time::sleep(poll).await;
                }
            }
            missed += waiting.len() as u64;
            if present {
                let ws = &mut socks[origin];
                let lr = format!("l{r}");
                ws.send_text(&format!(
                    "[\"{jr}\",\"{lr}\",\"{topic}\",\"phx_leave\",{{}}]"
                ))
                .await
                .map_err(failed)?;
                ws.await_reply(&lr).await.map_err(failed)?;
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    for ws in &mut socks {
        let _ = ws.send_close().await;
    }
    Ok(json!({
        "scenario": "cluster",
        "urls": args.url,
        "nodes": names,
        "rounds": args.rounds,
        "poll_ms": args.poll_ms,
        "cluster_sizes_seen": sizes,
        "join_visible": lat.summary(),
        "leave_visible": leave_lat.summary(),
        "missed": missed,
        "refused_polls": refused,
    }))
}

/// The human summary's lines for this report.
pub(super) fn summary(r: &Value, line: &mut impl FnMut(String)) {
    line(format!(
        "cluster: {} node(s) {}, {} rounds, poll every {} ms",
        r["nodes"].as_array().map_or(0, Vec::len),
        r["nodes"],
        r["rounds"],
        r["poll_ms"]
    ));
    line(format!("  join visible  {}", lat_line(&r["join_visible"])));
    line(format!("  leave visible {}", lat_line(&r["leave_visible"])));
    line(format!(
        "  missed (not seen within 5 s) {}, cluster_size seen {}, refused polls {}",
        r["missed"], r["cluster_sizes_seen"], r["refused_polls"]
    ));
}
