//! Everything this node hears from Redis, in one task: other nodes' deltas
//! and goodbyes (into the view), relayed bus deliveries and producer events
//! (to this node's members), and the snapshot reads that fill the view when
//! deltas cannot: at start, after the subscription comes back from an
//! outage, and for a node whose sequence has a gap. While a node's snapshot
//! is being read its deltas wait here, and those newer than the snapshot are
//! applied after it, so nothing is applied twice or out of order. On a
//! Redis Cluster it also watches for a sharded subscription lost without a
//! word, and makes it afresh.

use super::conn::{self, Channels, Subscriber};
use super::{relay, sync, wire, RedisBackend};
use crate::cluster::keys::Carries;
use crate::cluster::view::{Delta, Gap, Heard};
use crate::throttle::Throttle;
use ::redis::{PushInfo, PushKind, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
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
    Snapshot(String, Result<Option<sync::Snapshot>, String>),
    /// The write a quiet node's snapshot holds (`None`: it has none), and
    /// what had last been heard from the node when that was asked.
    LastWrite(Arc<str>, Heard, Result<Option<sync::LastWrite>, String>),
}

struct Listener {
    redis: Arc<RedisBackend>,
    sub: Subscriber,
    channels: Channels,
    /// The sharded subscription must be made afresh (Redis Cluster).
    rebuild: bool,
    /// When this node's own last delta came back (its partition works).
    own_heard: Instant,
    /// When the subscription was last made.
    rebuilt: Instant,
    reads: JoinSet<Read>,
    /// Nodes whose snapshot is being read, with the deltas that arrived
    /// meanwhile.
    reading: HashMap<String, Vec<Delta>>,
    /// Nodes still to be read before the view counts as in sync.
    round: Option<HashSet<String>>,
    /// The subscription was lost; the next confirmation starts a round.
    lost: bool,
    /// Markers of given-up subscriber connections read so far: while fewer
    /// than the subscriber has given up, pushes come from a connection
    /// already replaced (Redis Cluster).
    replaced_seen: u64,
    /// Quiet nodes whose last write was asked of Redis, and when; a node
    /// is forgotten here once it is heard again or leaves the view.
    asked: HashMap<Arc<str>, Instant>,
    complaints: Throttle,
}

/// Subscribes (once: the connection manager resubscribes after every
/// reconnect on a single Redis; again after every rebuild on a Redis
/// Cluster) and handles what arrives until the task is dropped.
pub async fn run(
    redis: Arc<RedisBackend>,
    sub: Subscriber,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    let channels = Channels {
        view: redis.keys.views.clone(),
        relay: redis.keys.relays.clone(),
        events: redis.keys.events.clone(),
    };
    let ttl = Duration::from_millis(redis.ttl_ms);
    let mut expiry = tokio::time::interval(expiry_tick(ttl));
    let mut listener = Listener {
        redis,
        sub,
        channels,
        reads: JoinSet::new(),
        reading: HashMap::new(),
        round: None,
        lost: false,
        replaced_seen: 0,
        rebuild: false,
        own_heard: Instant::now(),
        rebuilt: Instant::now(),
        asked: HashMap::new(),
        complaints: Throttle::new(),
    };
    listener.subscribe().await;
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(push) => listener.on_push(push),
                None => return,
            },
            Some(Ok(read)) = listener.reads.join_next() => listener.on_read(read),
            _ = expiry.tick() => listener.expire(ttl),
        }
        if listener.rebuild {
            listener.subscribe().await;
        }
    }
}

impl Listener {
    /// Subscribes until it works, then reads every node: whatever was sent
    /// while not subscribed is in the snapshots.
    async fn subscribe(&mut self) {
        let mut logged = false;
        loop {
            let attempt = tokio::time::timeout(
                SUBSCRIBE_TIMEOUT,
                self.sub.subscribe(&self.channels, &self.redis.conn),
            )
            .await;
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
        tracing::debug!(sharded = self.sub.is_cluster(), "subscribed");
        self.rebuild = false;
        self.rebuilt = Instant::now();
        self.own_heard = Instant::now();
        self.start_round();
    }

    /// Whether a partition may be suspected of having gone quiet now: on a
    /// Redis Cluster (a single Redis resubscribes by itself), while Redis
    /// answers, and at most every few seconds.
    fn may_suspect(&self, now: Instant) -> bool {
        let quiet = quiet_limit(self.redis.ttl_ms);
        self.sub.is_cluster()
            && self.redis.health.is_up()
            && now.saturating_duration_since(self.rebuilt) >= quiet.max(Duration::from_secs(3))
    }

    /// On a Redis Cluster, looks for a partition that went quiet. The
    /// client does not resubscribe a sharded channel after a failover, so
    /// quiet means: subscribe afresh. No echo of this node's own deltas
    /// is proof enough. A node in the view not heard from is not: it may
    /// simply have died (it leaves the view by its TTL), and subscribing
    /// afresh for it would cost healthy nodes degraded answers and relayed
    /// messages. So Redis is asked which write its snapshot holds, off this
    /// loop, and only a write that never arrived here counts.
    fn watch_quiet(&mut self, now: Instant) {
        if !self.may_suspect(now) {
            return;
        }
        let limit = quiet_limit(self.redis.ttl_ms);
        if now.saturating_duration_since(self.own_heard) > limit {
            tracing::info!("a sharded channel went quiet: subscribing afresh");
            self.rebuild = true;
            return;
        }
        let silent = self.redis.view.silent(limit, now);
        self.asked
            .retain(|node, _| silent.iter().any(|(quiet, _)| quiet == node));
        // Asked again every write period while it stays quiet: an answer
        // that came before the node's next write was due proves nothing,
        // and a live node left unheard would drop out of the view for good.
        // Never sooner than a command times out, so one question at a time.
        let again = super::writer::refresh_period(self.redis.ttl_ms).max(super::COMMAND_TIMEOUT);
        for (node, heard) in silent {
            // A node whose snapshot is being read is caught up by the read.
            if self.reading.contains_key(&*node) {
                continue;
            }
            if let Some(at) = self.asked.get(&node) {
                if now.saturating_duration_since(*at) < again {
                    continue;
                }
            }
            self.asked.insert(node.clone(), now);
            let redis = self.redis.clone();
            self.reads.spawn(async move {
                let written = sync::last_write(&redis, &node).await;
                Read::LastWrite(node, heard, written)
            });
        }
    }

    /// What Redis said about a quiet node.
    fn on_last_write(
        &mut self,
        node: Arc<str>,
        heard: Heard,
        written: Result<Option<sync::LastWrite>, String>,
    ) {
        let written = match written {
            Ok(written) => written,
            // Asked again a write period later, if still quiet (the
            // failure marked Redis down, `bounded`).
            Err(_) => return,
        };
        // Heard from (or gone) meanwhile: nothing was lost for it.
        if self.redis.view.last_heard(&node).as_ref() != Some(&heard) {
            return;
        }
        if self.may_suspect(Instant::now()) && wrote_unheard(&heard, written.as_ref()) {
            tracing::info!(%node, "a sharded channel went quiet: subscribing afresh");
            self.rebuild = true;
        }
    }

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
        if conn::is_replaced_marker(&push) {
            self.replaced_seen += 1;
            return;
        }
        // What a replaced connection says of itself (lost, unsubscribed)
        // was answered by the subscription made since: a failover ends a
        // sharded subscription once per channel, and one fresh subscription
        // answers them all. Its messages still count: they were sent before
        // and are not sent again.
        let stale = self.replaced_seen < self.sub.replaced();
        match push.kind {
            PushKind::Disconnection | PushKind::SUnsubscribe if stale => {}
            PushKind::Disconnection => {
                self.lost = true;
                self.redis.synced.store(false, Ordering::SeqCst);
                // On a Redis Cluster nothing else starts the round that
                // syncs the view again while every partition still carries
                // traffic: the client resubscribes only when the same
                // server comes back (not after a failover), and its
                // confirmations are not awaited here.
                if self.sub.is_cluster() {
                    tracing::info!("lost a redis server: subscribing afresh");
                    self.rebuild = true;
                }
            }
            PushKind::Subscribe if self.lost && !self.sub.is_cluster() => {
                self.lost = false;
                tracing::info!("subscribed again after losing redis: reading every node");
                self.start_round();
            }
            // Redis dropped a sharded subscription (failover, slot moved).
            PushKind::SUnsubscribe => {
                tracing::info!("redis ended a sharded subscription: subscribing afresh");
                self.rebuild = true;
            }
            PushKind::Message | PushKind::SMessage => {
                let [Value::BulkString(channel), Value::BulkString(body)] = push.data.as_slice()
                else {
                    return;
                };
                let outcome = match self.redis.keys.carries(channel) {
                    Some(Carries::View) => self.on_view(body),
                    Some(Carries::Relay) => relay::from_node(&self.redis, body),
                    Some(Carries::Events) => relay::from_producer(&self.redis, body),
                    None => return,
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
                    if *delta.origin == *self.redis.origin {
                        self.own_heard = Instant::now();
                    } else if let Some(more) = self.complaints.allow() {
                        tracing::error!(node = %delta.node, suppressed = more, "another process publishes as this node: give every node a unique --node");
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
    fn apply(&mut self, delta: Delta) {
        self.apply_heard(delta, Instant::now());
    }

    /// Applies a delta that shows its node alive at `heard`.
    fn apply_heard(&mut self, mut delta: Delta, heard: Instant) {
        match self.redis.view.apply(&delta, heard) {
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
            Read::Names(Err(_)) => {
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
                    Some(sync::Snapshot {
                        delta: snapshot,
                        age,
                    }) => {
                        let (origin, seq) = (snapshot.origin.clone(), snapshot.seq);
                        // The node was last heard from when it wrote the
                        // snapshot, not now: one that died leaves the view
                        // by its TTL even when its snapshot is read late.
                        let heard = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                        self.apply_heard(snapshot, heard);
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
            Read::LastWrite(node, heard, written) => self.on_last_write(node, heard, written),
            Read::Snapshot(node, Err(_)) => {
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
        self.watch_quiet(now);
    }
}

/// How long a partition may stay silent before it counts as quiet: a few
/// write periods.
fn quiet_limit(ttl_ms: u64) -> Duration {
    (super::writer::refresh_period(ttl_ms) * 5 / 2).max(Duration::from_millis(500))
}

/// Whether Redis holds writes of a quiet node that never arrived here: two
/// or more after the last one heard of its process, or one of another
/// process under the node's name. A node publishes a delta right after each
/// write, so the deltas were lost on their way: the subscription (or the
/// partition itself) failed. One unheard write is no proof: a node killed
/// between a write and its delta leaves one (as a rule), and subscribing
/// afresh for a dead node would cost the live ones relayed messages (the
/// old subscription is closed before the new one is made). A live node
/// writes at least once a write period, so by the time its partition
/// counts as quiet (two and a half periods) it has written twice.
fn wrote_unheard(heard: &Heard, written: Option<&sync::LastWrite>) -> bool {
    written.is_some_and(|w| *w.origin != *heard.origin || w.seq > heard.seq.saturating_add(1))
}

/// How often silent nodes are looked for: fine enough that one leaves the
/// view within the TTL of its last word (it is dropped one tick early).
fn expiry_tick(ttl: Duration) -> Duration {
    (ttl / 20).clamp(Duration::from_millis(10), Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(origin: &str, seq: u64) -> Heard {
        Heard {
            origin: origin.into(),
            seq,
            at: Instant::now(),
        }
    }

    fn written(origin: &str, seq: u64) -> Option<sync::LastWrite> {
        Some(sync::LastWrite {
            origin: origin.into(),
            seq,
        })
    }

    #[test]
    fn a_node_that_died_after_its_last_delta_shows_no_lost_subscription() {
        let last = heard("b/1", 7);
        assert!(!wrote_unheard(&last, written("b/1", 7).as_ref()));
        // Killed after a write, before its delta.
        assert!(!wrote_unheard(&last, written("b/1", 8).as_ref()));
        // Its snapshot expired, or it left.
        assert!(!wrote_unheard(&last, None));
        // A snapshot behind the view (read before a delta) is no news.
        assert!(!wrote_unheard(&last, written("b/1", 6).as_ref()));
    }

    #[test]
    fn a_node_that_kept_writing_unheard_shows_a_lost_subscription() {
        let last = heard("b/1", 7);
        assert!(wrote_unheard(&last, written("b/1", 9).as_ref()));
        assert!(wrote_unheard(&last, written("b/1", 12).as_ref()));
        // Restarted under the same name, its full delta never arrived.
        assert!(wrote_unheard(&last, written("b/2", 1).as_ref()));
    }

    #[test]
    fn quiet_is_two_and_a_half_write_periods_at_least_half_a_second() {
        assert_eq!(quiet_limit(5000), Duration::from_millis(2500));
        assert_eq!(quiet_limit(1500), Duration::from_millis(1250));
        assert_eq!(quiet_limit(300), Duration::from_millis(500));
    }
}
