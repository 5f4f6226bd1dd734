//! What `bench presence` reads off the nodes: a topic's presence counts
//! (`GET /api/presence/stats?topic=T`, SPEC §9.2), which also tells a
//! presence topic from a plain one, and the RSS and CPU time of the
//! `--server-pid` processes (pid i is node i's; a single pid is the first
//! node's).

use crate::http::Http;
use crate::{cpu_seconds, rss_of, BenchArgs, Endpoint};
use serde_json::Value;
use std::time::{Duration, Instant};

/// What a node says about a topic's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::scenarios) enum Kept {
    /// A presence topic: its `connections` and `users` cluster-wide.
    Yes { connections: u64, users: u64 },
    /// The node says it is not a presence topic.
    No,
    /// No answer to go by (no such route, or an error).
    Unknown,
}

/// `topic` escaped for a query string.
pub(in crate::scenarios) fn query_escape(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len());
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads an answer of `GET /api/presence/stats`.
pub(in crate::scenarios) fn kept_of(status: u16, body: &str) -> Kept {
    match status {
        200 => {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            match (v["connections"].as_u64(), v["users"].as_u64()) {
                (Some(connections), Some(users)) => Kept::Yes { connections, users },
                _ => Kept::Unknown,
            }
        }
        404 if body.contains("not a presence topic") => Kept::No,
        _ => Kept::Unknown,
    }
}

pub(in crate::scenarios) async fn presence_stats(ep: &Endpoint, topic: &str) -> Kept {
    let path = format!("/api/presence/stats?topic={}", query_escape(topic));
    match Http::new(ep.addr).request("GET", &path, None).await {
        Ok((status, body)) => kept_of(status, &body),
        Err(_) => Kept::Unknown,
    }
}

/// Polls every node until each says `users` == `connections` == `want`
/// or `limit` passes: whether they did (None when a node cannot say) and
/// the seconds it took.
pub(in crate::scenarios) async fn converge(
    eps: &[Endpoint],
    topic: &str,
    want: u64,
    limit: Duration,
) -> (Option<bool>, f64) {
    let start = Instant::now();
    loop {
        let mut all = Some(true);
        for ep in eps {
            match presence_stats(ep, topic).await {
                Kept::Yes { connections, users } => {
                    if connections != want || users != want {
                        all = all.map(|_| false);
                    }
                }
                _ => all = None,
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if all != Some(false) || start.elapsed() >= limit {
            return (all, secs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Node i's pid, for each of `nodes` nodes.
pub(in crate::scenarios) fn pids(args: &BenchArgs, nodes: usize) -> Vec<Option<u32>> {
    (0..nodes)
        .map(|i| args.server_pid.get(i).copied())
        .collect()
}

pub(in crate::scenarios) fn rss_all(pids: &[Option<u32>]) -> Vec<Option<u64>> {
    pids.iter().map(|p| p.and_then(rss_of)).collect()
}

/// Longest `steady_rss` waits past `settle` for the RSS to stop moving.
const STEADY_WITHIN: Duration = Duration::from_secs(30);

/// Each node's RSS once it is steady: read every second from `settle`
/// on, until no node's moved more than 0.5 % over the last 4 s (the
/// allocator gives a burst's freed pages back over some 10 s, in steps,
/// so one reading at a fixed time catches part of the burst); at most
/// `STEADY_WITHIN` more. Returns the readings and the seconds waited.
pub(in crate::scenarios) async fn steady_rss(
    pids: &[Option<u32>],
    settle: f64,
) -> (Vec<Option<u64>>, f64) {
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(settle.max(0.0))).await;
    let mut window: Vec<Vec<Option<u64>>> = vec![rss_all(pids)];
    let past = start.elapsed();
    let steady = |w: &[Vec<Option<u64>>]| {
        w.len() >= 5
            && (0..pids.len()).all(|i| {
                let v: Vec<u64> = w[w.len() - 5..].iter().filter_map(|r| r[i]).collect();
                match (v.iter().min(), v.iter().max()) {
                    (Some(&lo), Some(&hi)) => (hi - lo) * 200 <= lo,
                    _ => true,
                }
            })
    };
    while !steady(&window) && start.elapsed() < past + STEADY_WITHIN {
        tokio::time::sleep(Duration::from_secs(1)).await;
        window.push(rss_all(pids));
    }
    let last = window.pop().unwrap_or_default();
    (last, start.elapsed().as_secs_f64())
}

/// CPU seconds of each node process (None without its pid).
pub(in crate::scenarios) fn cpu_all(pids: &[Option<u32>]) -> Vec<Option<f64>> {
    pids.iter()
        .map(|p| p.and_then(|p| cpu_seconds(Some(p))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_answers_are_read() {
        assert_eq!(
            kept_of(200, r#"{"connections":3,"users":2}"#),
            Kept::Yes {
                connections: 3,
                users: 2
            }
        );
        assert_eq!(
            kept_of(404, r#"{"error":"not a presence topic"}"#),
            Kept::No
        );
        assert_eq!(kept_of(404, r#"{"error":"not found"}"#), Kept::Unknown);
        assert_eq!(kept_of(200, "{}"), Kept::Unknown);
        assert_eq!(query_escape("bench:p 1&x"), "bench:p%201%26x");
    }
}
