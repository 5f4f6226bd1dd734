//! `bench presence`'s members: N sockets, member i on node i mod n, each
//! joined to one topic — the presence topic with `{"user_id": "u<i>"}`
//! (its `presence_state` awaited as part of the join), or the plain topic
//! with `{}` for the memory comparison. Each member's task is started as
//! soon as it has joined and reads its socket until told to stop: every
//! `presence_diff` it gets is counted, and the first member of each node
//! (member i < n) is that node's observer, which parses its diffs and
//! reports the churners' keys (`c…`) found in `joins` and `leaves`, with
//! the time the frame was read.

use super::super::listen::{listen, End, Listener};
use super::super::pool::bar;
use super::super::report::round3;
use super::CHURN_KEY;
use crate::client::{Ws, OP_TEXT};
use crate::hist::Hist;
use crate::worker::open_joined_with;
use crate::{source_addrs, BenchArgs, Endpoint};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// How long a joiner waits for its `presence_state`.
const STATE_WITHIN: Duration = Duration::from_secs(10);

/// What every member adds up.
pub(super) struct Counters {
    /// `presence_diff` pushes received, by the node of the member.
    diffs: Vec<AtomicU64>,
    pub(super) diff_bytes: AtomicU64,
    /// Members whose socket closed before the end.
    pub(super) gone: AtomicU64,
}

impl Counters {
    pub(super) fn new(nodes: usize) -> Counters {
        Counters {
            diffs: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            diff_bytes: AtomicU64::new(0),
            gone: AtomicU64::new(0),
        }
    }

    /// Diffs received so far, by node.
    pub(super) fn diffs(&self) -> Vec<u64> {
        self.diffs
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect()
    }

    fn diff(&self, node: usize) {
        if let Some(d) = self.diffs.get(node) {
            d.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An observer's diff that names churners' keys.
pub(super) struct Seen {
    pub(super) node: usize,
    pub(super) at: Instant,
    pub(super) joins: Vec<String>,
    pub(super) leaves: Vec<String>,
}

/// The members, running.
pub(super) struct Members {
    pub(super) opened: usize,
    /// Members per node, by node.
    pub(super) per_node: Vec<usize>,
    /// Nodes that have an observer.
    pub(super) observed: Vec<usize>,
    pub(super) report: Value,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Members {
    /// Tells every member to close, and waits (at most 10 s) until they have.
    pub(super) async fn close(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
    }
}

/// The keys of a `presence_diff` frame.
#[derive(Deserialize)]
struct DiffKeys {
    #[serde(default)]
    joins: HashMap<String, IgnoredAny>,
    #[serde(default)]
    leaves: HashMap<String, IgnoredAny>,
}

/// The churners' keys in the `joins` and `leaves` of a `presence_diff`
/// frame (`[join_ref, ref, topic, "presence_diff", {joins, leaves}]`).
pub(super) fn churn_keys(frame: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    type Frame = (IgnoredAny, IgnoredAny, IgnoredAny, IgnoredAny, DiffKeys);
    let (_, _, _, _, d) = serde_json::from_slice::<Frame>(frame).ok()?;
    let ours = |m: HashMap<String, IgnoredAny>| -> Vec<String> {
        m.into_keys().filter(|k| k.starts_with(CHURN_KEY)).collect()
    };
    Some((ours(d.joins), ours(d.leaves)))
}

/// One member's set-up: connect and join times, and (presence) the time
/// from the join to its `presence_state`, in µs.
type Opened = Result<(u64, u64, Option<u64>), String>;

/// Opens the members (64 at a time) on `topic`; `presence` says whether it
/// keeps presence (join param `user_id`, `presence_state` awaited).
pub(super) async fn open(
    args: &BenchArgs,
    eps: &[Endpoint],
    topic: &str,
    presence: bool,
    counters: &Arc<Counters>,
    seen: Option<mpsc::UnboundedSender<Seen>>,
) -> Members {
    let n = eps.len();
    let heartbeat = Duration::from_millis(args.heartbeat_ms.max(1000));
    let sources: Vec<Vec<IpAddr>> = eps
        .iter()
        .map(|e| source_addrs(e.addr, args.sources))
        .collect();
    let permits = Arc::new(Semaphore::new(64));
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(usize, Opened)>();
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let what = if presence { "members" } else { "plain" };
    let pb = bar(args.sockets as u64, what);
    let mut results: Vec<(usize, Opened)> = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        let node = i % n;
        let src = (!sources[node].is_empty()).then(|| sources[node][i % sources[node].len()]);
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let member = Member {
            node,
            presence,
            observer: presence && i < n,
            counters: counters.clone(),
            seen: seen.clone(),
            stop: stop_rx.clone(),
            heartbeat,
        };
        let (target, topic, ready) = (eps[node].target(), topic.to_string(), ready_tx.clone());
        tasks.spawn(async move {
            let params = if presence {
                format!("{{\"user_id\":\"u{i}\"}}")
            } else {
                "{}".to_string()
            };
            let opened = tokio::time::timeout(
                Duration::from_secs(30),
                join(&target, src, &topic, &params, presence),
            )
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            drop(permit);
            match opened {
                Ok((ws, times)) => {
                    let _ = ready.send((i, Ok(times)));
                    // Only tasks still opening hold a sender: the channel
                    // closes once every member has joined or failed.
                    drop(ready);
                    member.run(ws).await;
                }
                Err(e) => {
                    let _ = ready.send((i, Err(e)));
                }
            }
        });
        while let Ok(r) = ready_rx.try_recv() {
            results.push(r);
            pb.inc(1);
        }
    }
    drop(ready_tx);
    while results.len() < args.sockets {
        match ready_rx.recv().await {
            Some(r) => {
                results.push(r);
                pb.inc(1);
            }
            None => break,
        }
    }
    pb.finish_and_clear();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut connect_join, mut to_state) = (Hist::default(), Hist::default());
    let mut per_node = vec![0; n];
    let mut observed = Vec::new();
    for (i, r) in &results {
        match r {
            Ok((c, j, s)) => {
                connect_join.record(c + j);
                if let Some(s) = s {
                    to_state.record(*s);
                }
                per_node[i % n] += 1;
                if presence && *i < n {
                    observed.push(*i);
                }
            }
            Err(e) => *errors.entry(e.clone()).or_default() += 1,
        }
    }
    observed.sort_unstable();
    let opened: usize = per_node.iter().sum();
    let report = json!({
        "topic": topic,
        "opened": opened,
        "failed": errors.values().sum::<u64>(),
        "errors": errors,
        "per_node": per_node,
        "seconds": round3(start.elapsed().as_secs_f64()),
        "connect_join_latency": connect_join.summary(),
        "join_to_state": if presence { serde_json::to_value(to_state.summary()).unwrap_or(Value::Null) } else { Value::Null },
    });
    Members {
        opened,
        per_node,
        observed,
        report,
        stop,
        tasks,
    }
}

/// Connects and joins; with `presence`, waits for the `presence_state` too.
async fn join(
    target: &crate::client::Target,
    src: Option<IpAddr>,
    topic: &str,
    params: &str,
    presence: bool,
) -> Result<(Ws, (u64, u64, Option<u64>)), String> {
    let t0 = Instant::now();
    let (mut ws, c, j) = open_joined_with(target, src, &[topic.to_string()], params, None).await?;
    if !presence {
        ws.release_buffers();
        return Ok((ws, (c, j, None)));
    }
    let joined_at = t0 + Duration::from_micros(c);
    match tokio::time::timeout(STATE_WITHIN, ws.await_event("presence_state")).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no presence_state within 10 s".into()),
    }
    let s = joined_at.elapsed().as_micros() as u64;
    ws.release_buffers();
    Ok((ws, (c, j, Some(s))))
}

/// A joined member's reading task.
struct Member {
    node: usize,
    presence: bool,
    observer: bool,
    counters: Arc<Counters>,
    seen: Option<mpsc::UnboundedSender<Seen>>,
    stop: watch::Receiver<bool>,
    heartbeat: Duration,
}

impl Member {
    async fn run(self, mut ws: Ws) {
        let Member {
            node,
            presence,
            observer,
            counters,
            seen,
            mut stop,
            heartbeat,
        } = self;
        let mut reader = Reader {
            counters,
            node,
            observer,
            presence,
            seen,
            found: Vec::new(),
        };
        let end = listen(&mut ws, &mut reader, heartbeat, &mut stop, Some(64 * 1024)).await;
        if end == End::Gone {
            reader.counters.gone.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a member does with its frames: counts its `presence_diff`s and
/// (an observer) reports the churners' keys they name.
struct Reader {
    counters: Arc<Counters>,
    node: usize,
    observer: bool,
    presence: bool,
    seen: Option<mpsc::UnboundedSender<Seen>>,
    /// The churners' keys (joins, leaves) of the diffs read in this batch.
    found: Vec<(Vec<String>, Vec<String>)>,
}

impl Listener for Reader {
    fn frame(&mut self, op: u8, d: &[u8]) {
        if op != OP_TEXT || !self.presence || !super::super::actor::is_push(d, "presence_diff") {
            return;
        }
        self.counters.diff(self.node);
        self.counters
            .diff_bytes
            .fetch_add(d.len() as u64, Ordering::Relaxed);
        if self.observer {
            if let Some((joins, leaves)) = churn_keys(d) {
                if !joins.is_empty() || !leaves.is_empty() {
                    self.found.push((joins, leaves));
                }
            }
        }
    }

    fn batch(&mut self) {
        if self.found.is_empty() {
            return;
        }
        let at = Instant::now();
        if let Some(seen) = &self.seen {
            for (joins, leaves) in self.found.drain(..) {
                let _ = seen.send(Seen {
                    node: self.node,
                    at,
                    joins,
                    leaves,
                });
            }
        }
        self.found.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churners_keys_are_read_from_diffs() {
        let frame = br#"[null,null,"bench:presence","presence_diff",{"joins":{"c1-4":{"metas":[{"phx_ref":"x"}]},"u7":{"metas":[]}},"leaves":{"c0-2":{"metas":[{"phx_ref":"y"}]}}}]"#;
        let (joins, leaves) = churn_keys(frame).unwrap();
        assert_eq!(joins, vec!["c1-4".to_string()]);
        assert_eq!(leaves, vec!["c0-2".to_string()]);
        let empty = br#"["1",null,"t","presence_diff",{"joins":{},"leaves":{}}]"#;
        assert_eq!(churn_keys(empty), Some((vec![], vec![])));
        assert!(churn_keys(b"[1,2]").is_none());
        let c = Arc::new(Counters::new(2));
        let reader = |node, observer| Reader {
            counters: c.clone(),
            node,
            observer,
            presence: true,
            seen: None,
            found: Vec::new(),
        };
        let (mut r0, mut r1) = (reader(0, true), reader(1, false));
        r0.frame(OP_TEXT, frame);
        r1.frame(OP_TEXT, frame);
        let state = br#"[null,null,"t","presence_state",{}]"#;
        r1.frame(OP_TEXT, state);
        assert_eq!(c.diffs(), vec![1, 1]);
        assert_eq!((r0.found.len(), r1.found.len()), (1, 0));
    }
}
