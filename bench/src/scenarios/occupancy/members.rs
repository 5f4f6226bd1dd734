//! `bench occupancy`'s watchers: S sockets, each joined to one topic with
//! `{"occupancy": true}`. Socket i joins topic i mod T on node ⌊i / T⌋ mod n,
//! so the k-th member of every topic is on node k mod n and, with S ≥ n·T,
//! every topic has a watcher on every node. Each runs a task that reads its
//! `occupancy` pushes; the first watcher of each (topic, node) is that
//! pair's observer and reports every push it gets, with the time it was
//! read, to the coordinator.

use super::super::listen::{listen, End, Listener};
use crate::client::{self, Ws, OP_TEXT};
use crate::hist::Hist;
use crate::worker::open_joined_with;
use crate::{source_addrs, BenchArgs, Endpoint};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

const OCCUPANCY_JOIN: &str = "{\"occupancy\":true}";

/// One joined watcher.
pub(super) struct Member {
    pub(super) topic: usize,
    pub(super) node: usize,
    ws: Ws,
}

/// What the watchers tell the coordinator.
pub(super) enum Seen {
    /// An observer's push: `topic`'s count as `node` reported it, read at `at`.
    Push {
        topic: usize,
        node: usize,
        count: u64,
        at: Instant,
    },
    /// A watcher's socket closed before the end.
    Gone { topic: usize },
}

pub(super) fn topic_name(args: &BenchArgs, topic: usize) -> String {
    format!("{}{topic}", args.topic_prefix)
}

/// Opens and joins the watchers, 64 at a time; the opened ones and the
/// set-up report (opened, failed by reason, connect+join latency).
pub(super) async fn open(args: &BenchArgs, eps: &[Endpoint]) -> (Vec<Member>, Value) {
    let n = eps.len();
    let t = args.topics.max(1);
    let sources: Vec<Vec<IpAddr>> = eps
        .iter()
        .map(|e| source_addrs(e.addr, args.sources))
        .collect();
    let permits = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    let start = Instant::now();
    for i in 0..args.sockets {
        let (topic, node) = (i % t, (i / t) % n);
        let target = eps[node].target();
        let src = (!sources[node].is_empty()).then(|| sources[node][i % sources[node].len()]);
        let names = [topic_name(args, topic)];
        let permit = permits.clone().acquire_owned().await;
        set.spawn(async move {
            let _permit = permit;
            let open = open_joined_with(&target, src, &names, OCCUPANCY_JOIN, None);
            let r = tokio::time::timeout(Duration::from_secs(30), open)
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
            (i, topic, node, r)
        });
    }
    let mut opened = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut lat = Hist::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, topic, node, Ok((ws, c, j)))) => {
                lat.record(c + j);
                opened.push((i, Member { topic, node, ws }));
            }
            Ok((_, _, _, Err(e))) => *errors.entry(e).or_default() += 1,
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    // In socket order, so each pair's observer is its lowest-numbered member.
    opened.sort_by_key(|(i, _)| *i);
    let report = json!({
        "opened": opened.len(),
        "failed": errors.values().sum::<u64>(),
        "errors": errors,
        "seconds": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "connect_join_latency": lat.summary(),
    });
    (opened.into_iter().map(|(_, m)| m).collect(), report)
}

/// Starts one reading task per watcher; returns the (topic, node) pairs
/// that have an observer.
pub(super) fn watch_all(
    members: Vec<Member>,
    seen: &mpsc::UnboundedSender<Seen>,
    pushes: &Arc<AtomicU64>,
    stop: &watch::Receiver<bool>,
    heartbeat: Duration,
    tasks: &mut JoinSet<()>,
) -> HashSet<(usize, usize)> {
    let mut observed = HashSet::new();
    for m in members {
        let observer = observed.insert((m.topic, m.node));
        tasks.spawn(watch(
            m,
            observer,
            seen.clone(),
            pushes.clone(),
            stop.clone(),
            heartbeat,
        ));
    }
    observed
}

/// The `connections` of an `occupancy` push frame.
pub(super) fn occupancy_count(data: &[u8]) -> Option<u64> {
    let head = &data[..data.len().min(160)];
    client::find(head, b"\",\"occupancy\",")?;
    client::number_after(data, b"\"connections\":")
}

/// What one watcher does with its pushes: counts them all, and (the
/// observer of its topic and node) reports each one's count.
struct Watcher {
    topic: usize,
    node: usize,
    observer: bool,
    seen: mpsc::UnboundedSender<Seen>,
    pushes: Arc<AtomicU64>,
    /// The counts of the pushes read in this batch.
    counts: Vec<u64>,
}

impl Listener for Watcher {
    fn frame(&mut self, op: u8, data: &[u8]) {
        if op == OP_TEXT {
            if let Some(c) = occupancy_count(data) {
                self.counts.push(c);
            }
        }
    }

    fn batch(&mut self) {
        if !self.counts.is_empty() {
            let at = Instant::now();
            self.pushes
                .fetch_add(self.counts.len() as u64, Ordering::Relaxed);
            if self.observer {
                for count in self.counts.drain(..) {
                    let _ = self.seen.send(Seen::Push {
                        topic: self.topic,
                        node: self.node,
                        count,
                        at,
                    });
                }
            }
            self.counts.clear();
        }
    }
}

/// One watcher until told to stop or closed.
async fn watch(
    mut m: Member,
    observer: bool,
    seen: mpsc::UnboundedSender<Seen>,
    pushes: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    heartbeat: Duration,
) {
    let mut w = Watcher {
        topic: m.topic,
        node: m.node,
        observer,
        seen,
        pushes,
        counts: Vec::new(),
    };
    if listen(&mut m.ws, &mut w, heartbeat, &mut stop, None).await == End::Gone {
        let _ = w.seen.send(Seen::Gone { topic: m.topic });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_pushes_are_told_from_other_frames() {
        let push = br#"[null,null,"bench:3","occupancy",{"topic":"bench:3","connections":17,"timestamp":"2026-01-01T00:00:00.000Z"}]"#;
        assert_eq!(occupancy_count(push), Some(17));
        let other = br#"[null,null,"bench:3","bench",{"connections":17}]"#;
        assert_eq!(occupancy_count(other), None);
        let reply = br#"["0","0","bench:3","phx_reply",{"status":"ok","response":{}}]"#;
        assert_eq!(occupancy_count(reply), None);
    }
}
