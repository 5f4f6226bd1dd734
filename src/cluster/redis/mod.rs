//! The Redis backend: the connections, what this node knows of Redis's
//! health, and the tasks that keep the cluster view. This node's snapshot
//! and deltas are written by `writer.rs`; other nodes' deltas, relayed bus
//! messages and producer events are received by `listener.rs`, which also
//! reads snapshots when it has missed something (`sync.rs`); the bus's way
//! out is `relay.rs`. `wire.rs` is what travels.
//!
//! Two connection managers, each reconnecting forever in the background:
//! one for commands, one (RESP3, automatic resubscription) for pub/sub, so a
//! burst of relayed messages never delays a write. Every command is bounded
//! by a timeout, because a manager that reconnects forever would otherwise
//! hold a command for the whole outage. No query waits on Redis: answers
//! come from the view, or from this node alone while the view cannot be
//! trusted.

mod conn;
mod listener;
mod relay;
mod sync;
mod wire;
mod writer;

use super::keys::Keys;
use super::view::View;
use crate::bus::{Bus, RelayReceiver};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::registry::Registry;
use crate::throttle::Throttle;
use ::redis::{PushInfo, PushKind};
use conn::Subscriber;

pub use conn::Conn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest one command (a write, a snapshot read) may take before Redis
/// counts as down.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest graceful shutdown waits to remove this node from Redis.
pub const LEAVE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often Redis is pinged, so that a Redis slower than 500 ms turns
/// answers degraded within a second even though no answer waits on it.
const PROBE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("bad --redis URL: {0}")]
    Url(::redis::RedisError),
    #[error("cannot set up the redis connection: {0}")]
    Connection(::redis::RedisError),
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Whether Redis works, as last seen by a command.
pub struct Health {
    state: AtomicU8,
    /// When a command last came back, in ms since `since`.
    answered: AtomicU64,
    since: Instant,
    error: Mutex<String>,
    metrics: Arc<Metrics>,
    /// Wakes the writer when Redis goes down, so it starts retrying now
    /// rather than at its next refresh.
    went_down: tokio::sync::Notify,
}

impl Health {
    fn new(metrics: Arc<Metrics>) -> Health {
        metrics.redis_up.set(0.0);
        Health {
            state: AtomicU8::new(UNKNOWN),
            answered: AtomicU64::new(0),
            since: Instant::now(),
            error: Mutex::new("waiting for redis".into()),
            metrics,
            went_down: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::SeqCst) == UP
    }

    pub fn is_down(&self) -> bool {
        self.state.load(Ordering::SeqCst) == DOWN
    }

    pub fn error(&self) -> String {
        self.lock().clone()
    }

    fn now_ms(&self) -> u64 {
        self.since.elapsed().as_millis() as u64
    }

    /// A command came back.
    fn answered(&self) {
        self.answered.fetch_max(self.now_ms(), Ordering::SeqCst);
    }

    /// A request sent at `sent` (from `now_ms`) failed: Redis is down,
    /// unless a command came back after it was sent. Such a failure is older
    /// news than that answer — typically a request that kept retrying
    /// through a Redis Cluster failover and timed out just after the
    /// cluster recovered — and would turn answers degraded again for
    /// nothing. A write that keeps failing still counts: the writer marks
    /// Redis down on its second failure in a row.
    fn failed(&self, sent: u64, why: &str) {
        if self.answered.load(Ordering::SeqCst) > sent {
            tracing::debug!(
                error = why,
                "a redis request failed after a later one was answered"
            );
            return;
        }
        self.down(why);
    }

    /// Whether nothing came back from Redis for longer than a command may
    /// take plus a probe period: Redis is too slow even if no timeout has
    /// fired yet.
    fn silent(&self) -> bool {
        let last = Duration::from_millis(self.answered.load(Ordering::SeqCst));
        self.since.elapsed().saturating_sub(last) > COMMAND_TIMEOUT + PROBE_EVERY
    }

    /// Redis answered (and, from the writer, holds this node's snapshot).
    pub fn up(&self) {
        self.metrics.redis_up.set(1.0);
        if self.state.swap(UP, Ordering::SeqCst) == DOWN {
            tracing::info!("redis is reachable again");
        }
    }

    pub fn down(&self, why: &str) {
        *self.lock() = why.to_owned();
        self.metrics.redis_up.set(0.0);
        if self.state.swap(DOWN, Ordering::SeqCst) != DOWN {
            self.went_down.notify_one();
            tracing::warn!(error = why, "redis unavailable: cluster answers degraded");
        }
    }
}

/// Short, single-line text for an error from Redis.
pub fn describe(e: &::redis::RedisError) -> String {
    let mut s = format!("redis error: {e}");
    if s.len() > 160 {
        let mut cut = 160;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s.replace('\n', " ")
}

/// Sends one request of `commands` commands to Redis: counted, bounded by
/// [`COMMAND_TIMEOUT`], its answer noted (`Health::answered`), its failure
/// (a Redis error or no answer in time) told in a short line and marking
/// Redis down (`Health::failed`) — the same for every read and write of
/// the backend.
pub async fn bounded<T>(
    redis: &RedisBackend,
    commands: u64,
    request: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, String> {
    redis.metrics.redis_commands.increment(commands);
    let sent = redis.health.now_ms();
    let outcome = match tokio::time::timeout(COMMAND_TIMEOUT, request).await {
        Err(_) => Err("redis unreachable or slower than 500 ms".to_owned()),
        Ok(reply) => reply.map_err(|e| describe(&e)),
    };
    match &outcome {
        Ok(_) => redis.health.answered(),
        Err(why) => redis.health.failed(sent, why),
    }
    outcome
}

/// What another component needs to use this node's Redis connection.
#[derive(Clone)]
pub struct RedisAccess {
    pub conn: Conn,
    pub prefix: String,
    /// This process's name in the cluster.
    pub origin: String,
}

/// The settings the Redis backend needs.
pub struct RedisSettings {
    pub url: String,
    /// This process's name in the cluster (`cluster::origin_id`).
    pub origin: String,
    pub prefix: String,
    pub node: String,
    pub ttl_ms: u64,
}

/// What the Redis backend is built from: the components it uses.
pub struct Parts {
    pub registry: Arc<Registry>,
    pub presence: Arc<Presence>,
    pub bus: Arc<Bus>,
    pub metrics: Arc<Metrics>,
    pub relay: RelayReceiver,
}

pub struct RedisBackend {
    node: String,
    keys: Keys,
    ttl_ms: u64,
    conn: Conn,
    /// Tags this process's messages, so it skips its own echo and others
    /// can tell a restarted node from a running one.
    origin: Arc<str>,
    health: Arc<Health>,
    /// Whether the view holds every live node (subscribed, and every
    /// snapshot read since the subscription last came up).
    synced: AtomicBool,
    metrics: Arc<Metrics>,
    /// What this node last wrote; held across a write so that `leave` is
    /// never overtaken by one.
    written: tokio::sync::Mutex<writer::Written>,
    complaints: Throttle,
    registry: Arc<Registry>,
    presence: Arc<Presence>,
    bus: Arc<Bus>,
    view: Arc<View>,
    /// Taken by `spawn`: the subscriber, its pushes and the bus's relay
    /// queue.
    pending: Mutex<Option<Pending>>,
}

struct Pending {
    sub: Subscriber,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    relay: RelayReceiver,
}

impl RedisBackend {
    /// Sets up the connections without waiting for Redis: a node starts and
    /// serves its sockets even while Redis is down. `view` is what the
    /// backend keeps of the other nodes.
    pub fn new(
        settings: RedisSettings,
        parts: Parts,
        view: Arc<View>,
    ) -> Result<RedisBackend, RedisSetupError> {
        let target = conn::target(&settings.url)?;
        let health = Arc::new(Health::new(parts.metrics.clone()));
        // The command connection hears of a lost connection at once (RESP3),
        // so the writer retries at once and answers turn degraded at once.
        let watcher = health.clone();
        let on_push = move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                watcher.down("redis connection lost");
            }
        };
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let (conn, sub) = conn::open(target, on_push, push_tx)?;
        let backend = RedisBackend {
            origin: settings.origin.into(),
            keys: Keys::new(&settings.prefix, &settings.node, conn.is_cluster()),
            node: settings.node,
            ttl_ms: settings.ttl_ms,
            conn,
            health,
            synced: AtomicBool::new(false),
            metrics: parts.metrics,
            written: tokio::sync::Mutex::new(writer::Written::default()),
            complaints: Throttle::new(),
            registry: parts.registry,
            presence: parts.presence,
            bus: parts.bus,
            view,
            pending: Mutex::new(Some(Pending {
                sub,
                pushes: push_rx,
                relay: parts.relay,
            })),
        };
        Ok(backend)
    }

    /// Starts the writer, the listener, the relay, the probe and (on a Redis
    /// Cluster) the task that keeps the command connection on the cluster's
    /// topology, each ending when `stop` is cancelled.
    pub fn spawn(self: &Arc<Self>, tasks: &TaskTracker, stop: &CancellationToken) {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(Pending { sub, pushes, relay }) = taken else {
            return;
        };
        let until_stopped = |task| {
            tasks.spawn(stop.clone().run_until_cancelled_owned(task));
        };
        until_stopped(Box::pin(writer::run(self.clone())) as Task);
        until_stopped(Box::pin(relay::publish(self.clone(), relay)));
        until_stopped(Box::pin(listener::run(self.clone(), sub, pushes)));
        until_stopped(Box::pin(probe(self.clone())));
        until_stopped(Box::pin(conn::follow_topology(self.conn.clone())));
    }

    pub fn access(&self) -> RedisAccess {
        RedisAccess {
            conn: self.conn.clone(),
            prefix: self.keys.prefix.clone(),
            origin: self.origin.to_string(),
        }
    }

    /// Why cluster answers cannot come from the view right now, if they
    /// cannot: Redis is down, or the view has not caught up since it was.
    pub fn degraded(&self) -> Option<String> {
        if !self.health.is_up() {
            return Some(self.health.error());
        }
        if self.health.silent() {
            return Some("redis slower than 500 ms".into());
        }
        if !self.synced.load(Ordering::SeqCst) {
            return Some("cluster view not in sync with redis yet".into());
        }
        None
    }

    /// Removes this node from Redis at once (graceful shutdown): its
    /// snapshot, its registry entry, and a goodbye on the view channel so
    /// every other node drops it now. No write can follow.
    pub async fn leave(&self) {
        let mut written = self.written.lock().await;
        written.left = true;
        let mut conn = self.conn.clone();
        let mut del = ::redis::cmd("DEL");
        del.arg(&self.keys.meta)
            .arg(&self.keys.topics)
            .arg(&self.keys.presence);
        let mut zrem = ::redis::cmd("ZREM");
        zrem.arg(&self.keys.registry).arg(&self.node);
        let bye = self.publish(&self.keys.view, wire::goodbye(&self.node, &self.origin));
        self.metrics.redis_commands.increment(3);
        // One command at a time: on a Redis Cluster they live on different
        // slots.
        let goodbye = async {
            del.exec_async(&mut conn).await?;
            zrem.exec_async(&mut conn).await?;
            bye.exec_async(&mut conn).await
        };
        match tokio::time::timeout(LEAVE_TIMEOUT, goodbye).await {
            Ok(Ok(())) => tracing::info!("removed this node from redis"),
            Ok(Err(e)) => {
                tracing::warn!(error = %describe(&e), "could not remove this node from redis; it expires by itself")
            }
            Err(_) => tracing::warn!(
                "redis did not answer the goodbye in time; this node expires by itself"
            ),
        }
    }
}

impl RedisBackend {
    /// `PUBLISH` on a single Redis, `SPUBLISH` (sharded) on a Redis Cluster.
    fn publish(&self, channel: &str, message: String) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd(if self.conn.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        cmd.arg(channel).arg(message);
        cmd
    }
}

/// Asks Redis something every `PROBE_EVERY`, until the task is dropped: on
/// a Redis Cluster, the shard that holds this node's snapshot.
async fn probe(redis: Arc<RedisBackend>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let mut conn = redis.conn.clone();
        let mut ping = ::redis::cmd("EXISTS");
        ping.arg(&redis.keys.meta);
        let _ = bounded(&redis, 1, ping.exec_async(&mut conn)).await;
    }
}

/// A backend task, boxed so they all start the same way.
type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[cfg(test)]
mod tests {
    use super::Health;
    use crate::metrics::Metrics;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_failure_older_than_an_answer_leaves_redis_up() {
        let health = Health::new(Arc::new(Metrics::new()));
        health.answered();
        health.up();
        // Sent, then (while it retried through a failover) something later
        // was answered: its timeout is old news.
        let sent = health.now_ms();
        tokio::time::advance(Duration::from_millis(300)).await;
        health.answered();
        tokio::time::advance(Duration::from_millis(200)).await;
        health.failed(sent, "redis unreachable or slower than 500 ms");
        assert!(health.is_up());

        // Nothing answered since it was sent: Redis is down.
        let sent = health.now_ms();
        tokio::time::advance(Duration::from_millis(500)).await;
        health.failed(sent, "redis unreachable or slower than 500 ms");
        assert!(health.is_down());
        assert_eq!(health.error(), "redis unreachable or slower than 500 ms");
    }
}
