//! What the coordinator reads off the server while a scenario runs: its
//! counts over HTTP, its RSS, and the CPU both sides have used.

use super::failed;
use super::pool::Pool;
use super::report::round3;
use crate::http::Http;
use crate::{cpu_seconds, rss_of, BenchArgs, BenchError, Endpoint};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) connections: u64,
    pub(super) sockets: u64,
    pub(super) by_topic: BTreeMap<String, u64>,
}

pub(super) async fn counts(ep: &Endpoint) -> Result<Counts, BenchError> {
    // A node at its file limit answers 503 until it has a descriptor to
    // spare: retry for a few seconds.
    let mut tries = 0;
    let body = loop {
        tries += 1;
        let mut http = Http::new(ep.addr);
        match http.request("GET", "/api/stats", None).await {
            Ok((200, body)) => break body,
            Ok((status, _)) if tries >= 30 => {
                return Err(failed(format!("GET /api/stats answered {status}")))
            }
            Err(e) if tries >= 30 => return Err(failed(format!("GET /api/stats: {e}"))),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let v: Value = serde_json::from_str(&body).map_err(failed)?;
    let mut by_topic = BTreeMap::new();
    if let Some(map) = v["connections_by_topic"].as_object() {
        for (topic, nodes) in map {
            let n: u64 = nodes
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            by_topic.insert(topic.clone(), n);
        }
    }
    Ok(Counts {
        connections: v["connection_count"].as_u64().unwrap_or(0),
        sockets: v["socket_count"].as_u64().unwrap_or(0),
        by_topic,
    })
}

/// The baseline: counts that hold still for 300 ms (sockets of an earlier
/// run may still be closing), or the last read after 10 s.
pub(super) async fn quiet_counts(ep: &Endpoint) -> Result<Counts, BenchError> {
    let start = Instant::now();
    let mut last = counts(ep).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = counts(ep).await?;
        if now == last || start.elapsed() > Duration::from_secs(10) {
            return Ok(now);
        }
        last = now;
    }
}

/// Polls the server's counts until `done` holds or `limit` passes.
pub(super) async fn counts_until(
    ep: &Endpoint,
    limit: Duration,
    done: impl Fn(&Counts) -> bool,
) -> Result<(Counts, bool, f64), BenchError> {
    let start = Instant::now();
    loop {
        let c = counts(ep).await?;
        if done(&c) {
            return Ok((c, true, start.elapsed().as_secs_f64()));
        }
        if start.elapsed() >= limit {
            return Ok((c, false, start.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn rss(args: &BenchArgs) -> Option<u64> {
    args.server_pid.and_then(rss_of)
}

/// CPU seconds used by the server (with --server-pid) and by this client
/// since `start`, and per unit of work in µs.
pub(super) struct Cpu {
    pub(super) server: Option<f64>,
    pub(super) client: f64,
}

impl Cpu {
    pub(super) fn now(args: &BenchArgs, pool: &Pool) -> Cpu {
        Cpu {
            server: args.server_pid.and_then(|p| cpu_seconds(Some(p))),
            client: pool.client_cpu(),
        }
    }

    pub(super) fn since(&self, args: &BenchArgs, pool: &Pool, units: u64, wall_s: f64) -> Value {
        let now = Cpu::now(args, pool);
        let server = match (self.server, now.server) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let client = now.client - self.client;
        let per = |s: f64| {
            if units > 0 {
                Some((s * 1e6 / units as f64 * 10.0).round() / 10.0)
            } else {
                None
            }
        };
        let share = |s: f64| {
            if wall_s > 0.0 {
                Some(round3(s / wall_s))
            } else {
                None
            }
        };
        json!({
            "server_cpu_s": server.map(round3),
            "server_cores": server.and_then(share),
            "server_us_per_unit": server.and_then(per),
            "client_cpu_s": round3(client),
            "client_cores": share(client),
            "client_us_per_unit": per(client),
        })
    }
}
