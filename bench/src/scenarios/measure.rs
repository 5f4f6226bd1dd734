//! What the coordinator reads off the server while a scenario runs: its
//! counts over HTTP (when it has headcount's `/api/stats`), counters from
//! its `/metrics`, its RSS, and the CPU both sides have used.

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

/// The server's counts from headcount's `GET /api/stats`; `None` when the
/// target has no such route (the floor server, Phoenix: any answer but 200
/// or 503), so that scenarios skip their count checks and say so.
pub(super) async fn counts(ep: &Endpoint) -> Result<Option<Counts>, BenchError> {
    // A node at its file limit answers 503 until it has a descriptor to
    // spare: retry for a few seconds.
    let mut tries = 0;
    let body = loop {
        tries += 1;
        let mut http = Http::new(ep.addr);
        match http.request("GET", "/api/stats", None).await {
            Ok((200, body)) => break body,
            Ok((503, _)) if tries >= 30 => {
                return Err(failed("GET /api/stats answered 503 for 3 s"))
            }
            Ok((503, _)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => return Ok(None),
            Err(e) if tries >= 30 => return Err(failed(format!("GET /api/stats: {e}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
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
    Ok(Some(Counts {
        connections: v["connection_count"].as_u64().unwrap_or(0),
        sockets: v["socket_count"].as_u64().unwrap_or(0),
        by_topic,
    }))
}

/// What a report says when the target has no stats to check against.
pub(super) const NO_STATS: &str =
    "target has no GET /api/stats (not headcount): count checks skipped";

/// `{"sockets", "connections"}` of a read, or null without stats.
pub(super) fn brief(c: &Option<Counts>) -> Value {
    c.as_ref().map_or(
        Value::Null,
        |c| json!({"sockets": c.sockets, "connections": c.connections}),
    )
}

/// The baseline: counts that hold still for 300 ms (sockets of an earlier
/// run may still be closing), or the last read after 10 s; `None` at once
/// when the target has no stats.
pub(super) async fn quiet_counts(ep: &Endpoint) -> Result<Option<Counts>, BenchError> {
    let start = Instant::now();
    let Some(mut last) = counts(ep).await? else {
        return Ok(None);
    };
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some(now) = counts(ep).await? else {
            return Ok(None);
        };
        if now == last || start.elapsed() > Duration::from_secs(10) {
            return Ok(Some(now));
        }
        last = now;
    }
}

/// Polls the server's counts until `done` holds or `limit` passes: the
/// last counts, whether `done` held, and the seconds it took; `None`
/// without stats.
pub(super) async fn counts_until(
    ep: &Endpoint,
    limit: Duration,
    done: impl Fn(&Counts) -> bool,
) -> Result<Option<(Counts, bool, f64)>, BenchError> {
    let start = Instant::now();
    loop {
        let Some(c) = counts(ep).await? else {
            return Ok(None);
        };
        if done(&c) {
            return Ok(Some((c, true, start.elapsed().as_secs_f64())));
        }
        if start.elapsed() >= limit {
            return Ok(Some((c, false, start.elapsed().as_secs_f64())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of a Prometheus counter over all its label sets, from the
/// target's `GET /metrics`; `None` when there is no such route or no such
/// counter (a node that does not export it).
pub(super) async fn metric_total(ep: &Endpoint, name: &str) -> Option<f64> {
    let (status, body) = Http::new(ep.addr)
        .request("GET", "/metrics", None)
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    prometheus_sum(&body, name)
}

/// The sum of `name`'s samples in Prometheus text (`name 12`, `name{…} 3`).
pub(super) fn prometheus_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = if let Some(labelled) = rest.strip_prefix('{') {
            match labelled.find('}') {
                Some(i) => &labelled[i + 1..],
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue; // another metric whose name starts with this one
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

pub(super) fn rss(args: &BenchArgs) -> Option<u64> {
    args.pid().and_then(rss_of)
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
            server: args.pid().and_then(|p| cpu_seconds(Some(p))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_counters_are_summed_over_labels() {
        let text = "# HELP headcount_redis_commands_total Redis commands sent\n\
            # TYPE headcount_redis_commands_total counter\n\
            headcount_redis_commands_total{command=\"hincrby\"} 120\n\
            headcount_redis_commands_total{command=\"publish\"} 30\n\
            headcount_redis_commands_total_extra 999\n\
            headcount_joins_total 5\n";
        assert_eq!(
            prometheus_sum(text, "headcount_redis_commands_total"),
            Some(150.0)
        );
        assert_eq!(prometheus_sum(text, "headcount_joins_total"), Some(5.0));
        assert_eq!(prometheus_sum(text, "headcount_leaves_total"), None);
        assert_eq!(prometheus_sum("x 1e3\n", "x"), Some(1000.0));
    }
}
