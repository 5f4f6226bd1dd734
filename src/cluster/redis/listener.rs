//! Everything this node hears from Redis, in one task: other nodes' deltas
//! and goodbyes (into the view), relayed bus deliveries and producer events
//! (to this node's members), and the snapshot reads that fill the view when
//! deltas cannot: at start, after the subscription comes back from an
//! outage, and for a node whose sequence has a gap. While a node's snapshot
//! is being read its deltas wait here, and those newer than the snapshot are
//! applied after it, so nothing is applied twice or out of order.

use super::{relay, sync, wire, RedisBackend};
use crate::cluster::view::{Delta, Gap};
use crate::throttle::Throttle;
use ::redis::{PushInfo, PushKind, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

const SUBSCRIBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause before a failed subscription or snapshot read is tried again.
const RETRY: Duration = Duration::from_millis(100);
/// Deltas kept for a node while its snapshot is read; more means the read
/// is hopelessly behind, and it is simply read again.
const MAX_WAITING: usize = 256;

/// A read that finished.
enum Read {
    /// The registry of nodes, for a full round.
    Names(Result<Vec<String>, String>),
    /// One node's snapshot (`None`: the node is gone).
    Snapshot(String, Result<Option<Delta>, String>),
}

struct Listener {
    redis: Arc<RedisBackend>,
    reads: JoinSet<Read>,
    /// Nodes whose snapshot is being read, with the deltas that arrived
    /// meanwhile.
    reading: HashMap<String, Vec<Delta>>,
    /// Nodes still to be read before the view counts as in sync.
    round: Option<HashSet<String>>,
    /// The subscription was lost; the next confirmation starts a round.
    lost: bool,
    complaints: Throttle,
}

/// Subscribes (once: the connection manager resubscribes after every
/// reconnect) and handles what arrives until the task is dropped.
pub async fn run(redis: Arc<RedisBackend>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    let channels = [
        redis.keys.view.clone(),
        redis.keys.relay.clone(),
        redis.keys.events.clone(),
    ];
    let mut logged = false;
    loop {
        let mut sub = redis.sub.clone();
        let attempt = tokio::time::timeout(SUBSCRIBE_TIMEOUT, sub.subscribe(&channels)).await;
        match attempt {
            Ok(Ok(())) => break,
            Ok(Err(e)) if !logged => {
                tracing::warn!(error = %super::describe(&e), "cannot subscribe yet; retrying");
                logged = true;
            }
            _ => {}
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::debug!(channels = ?channels, "subscribed");
    let ttl = Duration::from_millis(redis.ttl_ms);
    let mut expiry = tokio::time::interval(expiry_tick(ttl));
    let mut listener = Listener {
        redis,
        reads: JoinSet::new(),
        reading: HashMap::new(),
        round: None,
        lost: false,
        complaints: Throttle::new(),
    };
    listener.start_round();
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(push) => listener.on_push(push),
                None => return,
            },
            Some(Ok(read)) = listener.reads.join_next() => listener.on_read(read),
            _ = expiry.tick() => listener.expire(ttl),
        }
    }
}

impl Listener {
    /// Reads every node's snapshot; the view is in sync when all are in.
    fn start_round(&mut self) {
        self.redis.synced.store(false, Ordering::SeqCst);
        let redis = self.redis.clone();
        self.reads
            .spawn(async move { Read::Names(sync::names(&redis).await) });
    }

    fn read_snapshot(&mut self, node: String, after: Duration) {
        if self.reading.contains_key(&node) {
            return;
        }
        self.reading.insert(node.clone(), Vec::new());
        let redis = self.redis.clone();
        self.reads.spawn(async move {
            tokio::time::sleep(after).await;
            let snapshot = sync::snapshot(&redis, &node).await;
            Read::Snapshot(node, snapshot)
        });
    }

    fn touch(&self, topics: &[Arc<str>]) {
        for t in topics {
            self.redis.registry.touch(t);
        }
        if !topics.is_empty() {
            self.census(Instant::now());
        }
    }

    fn on_push(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::Disconnection => {
                self.lost = true;
                self.redis.synced.store(false, Ordering::SeqCst);
            }
            PushKind::Subscribe if self.lost => {
                self.lost = false;
                tracing::info!("subscribed again after losing redis: reading every node");
                self.start_round();
            }
            PushKind::Message => {
                let [Value::BulkString(channel), Value::BulkString(body)] = push.data.as_slice()
                else {
                    return;
                };
                let keys = &self.redis.keys;
                let outcome = if channel.as_slice() == keys.view.as_bytes() {
                    self.on_view(body)
                } else if channel.as_slice() == keys.relay.as_bytes() {
                    relay::from_node(&self.redis, body)
                } else if channel.as_slice() == keys.events.as_bytes() {
                    relay::from_producer(&self.redis, body)
                } else {
                    return;
                };
                if let Err(why) = outcome {
                    self.redis.metrics.relay_rejected.increment(1);
                    if let Some(more) = self.complaints.allow() {
                        let channel = String::from_utf8_lossy(channel);
                        tracing::warn!(%channel, error = %why, suppressed = more, "rejected a message from redis");
                    }
                }
            }
            _ => {}
        }
    }

    fn on_view(&mut self, body: &[u8]) -> Result<(), String> {
        match wire::read(body)? {
            wire::Received::Goodbye { node, .. } => {
                if node != self.redis.node {
                    let changed = self.redis.view.remove(&node);
                    self.redis.presence.remove_node(&node);
                    self.touch(&changed);
                    if let Some(round) = &mut self.round {
                        round.remove(&node);
                    }
                }
            }
            wire::Received::Delta(delta) => {
                if delta.node == self.redis.node {
                    if *delta.origin != *self.redis.origin {
                        if let Some(more) = self.complaints.allow() {
                            tracing::error!(node = %delta.node, suppressed = more, "another process publishes as this node: give every node a unique --node");
                        }
                    }
                    return Ok(());
                }
                if let Some(waiting) = self.reading.get_mut(&delta.node) {
                    if waiting.len() < MAX_WAITING {
                        waiting.push(delta);
                    }
                    return Ok(());
                }
                self.apply(delta);
            }
        }
        Ok(())
    }

    /// Applies a delta, or starts reading its node's snapshot on a gap.
    fn apply(&mut self, mut delta: Delta) {
        match self.redis.view.apply(&delta, Instant::now()) {
            Ok(changed) => {
                let presence = std::mem::take(&mut delta.presence);
                self.redis
                    .presence
                    .apply_remote(&delta.node, delta.full, presence);
                self.touch(&changed);
                // The node's figures are current again: the round need not
                // wait for it.
                if let Some(round) = &mut self.round {
                    if round.remove(&delta.node) {
                        self.round_done();
                    }
                }
            }
            Err(Gap) => {
                // The snapshot is read after this delta arrived, and a node
                // publishes a delta only once its snapshot holds it: the
                // snapshot covers it. The delta itself is not kept: one the
                // snapshot never reaches (forged, far ahead of the node's
                // sequence, or of another process) would otherwise gap
                // again after every read and re-read the snapshot forever.
                self.read_snapshot(delta.node, Duration::ZERO);
            }
        }
    }

    fn on_read(&mut self, read: Read) {
        match read {
            Read::Names(Ok(mut names)) => {
                names.extend(self.redis.view.names().iter().map(|n| n.to_string()));
                names.retain(|n| *n != self.redis.node);
                names.sort();
                names.dedup();
                let round: HashSet<String> = names.iter().cloned().collect();
                for node in names {
                    self.read_snapshot(node, Duration::ZERO);
                }
                self.round = Some(round);
                self.round_done();
            }
            Read::Names(Err(why)) => {
                self.redis.health.down(&why);
                let redis = self.redis.clone();
                self.reads.spawn(async move {
                    tokio::time::sleep(RETRY).await;
                    Read::Names(sync::names(&redis).await)
                });
            }
            Read::Snapshot(node, Ok(snapshot)) => {
                let waiting = self.reading.remove(&node).unwrap_or_default();
                match snapshot {
                    // Gone from Redis. A node still heard from recently is
                    // rewriting its snapshot (Redis came back empty) and its
                    // full delta will come; one that is really gone leaves
                    // by goodbye or by the TTL. Either way the round waits
                    // for that, rather than dropping a live node.
                    None if self.redis.view.names().iter().any(|n| **n == *node) => {
                        return;
                    }
                    None => self.redis.presence.remove_node(&node),
                    Some(snapshot) => {
                        let (origin, seq) = (snapshot.origin.clone(), snapshot.seq);
                        self.apply(snapshot);
                        let mut newer: Vec<Delta> = waiting
                            .into_iter()
                            .filter(|d| d.full || d.origin != origin || d.seq > seq)
                            .collect();
                        newer.sort_by_key(|d| d.seq);
                        for delta in newer {
                            if self.reading.contains_key(&node) {
                                // A gap again: keep the rest for the next read.
                                if let Some(w) = self.reading.get_mut(&node) {
                                    w.push(delta);
                                }
                            } else {
                                self.apply(delta);
                            }
                        }
                    }
                }
                if let Some(round) = &mut self.round {
                    round.remove(&node);
                }
                self.round_done();
            }
            Read::Snapshot(node, Err(why)) => {
                self.redis.health.down(&why);
                let waiting = self.reading.remove(&node).unwrap_or_default();
                self.read_snapshot(node.clone(), RETRY);
                if let Some(w) = self.reading.get_mut(&node) {
                    *w = waiting;
                }
            }
        }
    }

    fn round_done(&mut self) {
        if self.round.as_ref().is_some_and(HashSet::is_empty) {
            self.round = None;
            self.redis.synced.store(true, Ordering::SeqCst);
            tracing::debug!(
                nodes = self.redis.view.names().len(),
                "cluster view in sync"
            );
            self.census(Instant::now());
        }
    }

    /// Live nodes and the oldest figures, for the metrics.
    fn census(&self, now: Instant) {
        let nodes = self.redis.view.nodes(now);
        let oldest = nodes.iter().map(|n| n.age_ms).max().unwrap_or(0);
        let metrics = &self.redis.metrics;
        metrics.cluster_nodes.set((nodes.len() + 1) as f64);
        metrics.oldest_node_age.set(oldest as f64 / 1000.0);
    }

    /// Drops nodes not heard from within the TTL, and updates the census.
    fn expire(&mut self, ttl: Duration) {
        let now = Instant::now();
        let (gone, changed) = self
            .redis
            .view
            .expire(ttl.saturating_sub(expiry_tick(ttl)), now);
        if let Some(round) = &mut self.round {
            for node in &gone {
                round.remove(&**node);
            }
        }
        self.round_done();
        for node in &gone {
            self.redis.presence.remove_node(node);
        }
        if !gone.is_empty() {
            tracing::info!(nodes = ?gone, "nodes silent for longer than the ttl left the view");
            self.touch(&changed);
        }
        self.census(now);
    }
}

/// How often silent nodes are looked for: fine enough that one leaves the
/// view within the TTL of its last word (it is dropped one tick early).
fn expiry_tick(ttl: Duration) -> Duration {
    (ttl / 20).clamp(Duration::from_millis(10), Duration::from_millis(100))
}
