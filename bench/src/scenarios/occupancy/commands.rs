//! What the churn phase costs Redis: each node's own count of the commands
//! it sent (`headcount_redis_commands_total` from its `/metrics`; "n/a"
//! where there is none) and Redis's count of the commands it ran (`INFO
//! commandstats`, with `--redis`), read at the start and end of the phase.

use super::super::measure::metric_total;
use crate::redis_info;
use crate::Endpoint;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Instant;

pub(super) const METRIC: &str = "headcount_redis_commands_total";

pub(super) struct Snapshot {
    at: Instant,
    nodes: Vec<Option<f64>>,
    redis: Option<Result<u64, String>>,
}

pub(super) async fn snapshot(eps: &[Endpoint], redis: Option<SocketAddr>) -> Snapshot {
    let mut nodes = Vec::with_capacity(eps.len());
    for ep in eps {
        nodes.push(metric_total(ep, METRIC).await);
    }
    let redis = match redis {
        Some(addr) => Some(
            redis_info::commands_total(addr)
                .await
                .map_err(|e| e.to_string()),
        ),
        None => None,
    };
    Snapshot {
        at: Instant::now(),
        nodes,
        redis,
    }
}

/// Commands per second between two snapshots: per node (null = n/a) and
/// Redis's total (null without `--redis`; `redis_error` when it failed).
pub(super) fn rates(urls: &[String], a: &Snapshot, b: &Snapshot) -> Value {
    let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
    let rate = |d: f64| {
        if secs > 0.0 {
            Some((d / secs * 10.0).round() / 10.0)
        } else {
            None
        }
    };
    let nodes: Vec<Value> = urls
        .iter()
        .zip(a.nodes.iter().zip(&b.nodes))
        .map(|(url, pair)| {
            let per_s = match pair {
                (Some(x), Some(y)) => rate(y - x),
                _ => None,
            };
            json!({"url": url, "per_s": per_s})
        })
        .collect();
    let (redis, error) = match (&a.redis, &b.redis) {
        (Some(Ok(x)), Some(Ok(y))) => (rate(y.saturating_sub(*x) as f64), None),
        (Some(Err(e)), _) | (_, Some(Err(e))) => (None, Some(e.clone())),
        _ => (None, None),
    };
    json!({
        "metric": METRIC,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "nodes": nodes,
        "redis_info_per_s": redis,
        "redis_error": error,
    })
}

/// "12.5/s", or "n/a".
pub(super) fn per_s_text(v: &Value) -> String {
    v.as_f64().map_or("n/a".into(), |x| format!("{x}/s"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_are_per_second_and_na_when_absent() {
        let t0 = Instant::now();
        let a = Snapshot {
            at: t0,
            nodes: vec![Some(100.0), None],
            redis: Some(Ok(1000)),
        };
        let b = Snapshot {
            at: t0 + Duration::from_secs(2),
            nodes: vec![Some(150.0), None],
            redis: Some(Ok(1600)),
        };
        let urls = vec!["a".to_string(), "b".to_string()];
        let r = rates(&urls, &a, &b);
        assert_eq!(r["nodes"][0]["per_s"], 25.0);
        assert!(r["nodes"][1]["per_s"].is_null());
        assert_eq!(per_s_text(&r["nodes"][1]["per_s"]), "n/a");
        assert_eq!(per_s_text(&r["nodes"][0]["per_s"]), "25/s");
        assert_eq!(r["redis_info_per_s"], 300.0);
        let c = Snapshot {
            at: t0 + Duration::from_secs(2),
            nodes: vec![None, None],
            redis: Some(Err("refused".into())),
        };
        let r = rates(&urls, &a, &c);
        assert!(r["redis_info_per_s"].is_null());
        assert_eq!(r["redis_error"], "refused");
        assert!(r["nodes"][0]["per_s"].is_null());
    }
}
