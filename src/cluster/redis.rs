//! The Redis backend: the connections, what this node knows of Redis's
//! health, and cluster stats read in one round trip. Keeping this node's
//! figures in Redis lives in `figures.rs`, the pub/sub relay in `relay.rs`.
//!
//! Two connection managers, each reconnecting forever in the background:
//! one for commands, one (RESP3, automatic resubscription) for pub/sub, so a
//! burst of relayed messages never delays a stats query. Every command is
//! bounded by a timeout here, because a manager that reconnects forever
//! would otherwise hold a command for the whole outage.

use super::keys::{self, Keys};
use super::view::{self, Census, ClusterRead};
use super::Parts;
use crate::bus::{Bus, RelayReceiver};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::stats::Reporter;
use crate::throttle::Throttle;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a stats query waits on Redis before answering degraded.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest a write of this node's figures may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest graceful shutdown waits to remove this node from Redis.
pub const LEAVE_TIMEOUT: Duration = Duration::from_millis(1000);

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

/// Whether Redis works, as last seen by a write or a read.
pub struct Health {
    state: AtomicU8,
    error: Mutex<String>,
    metrics: Arc<Metrics>,
    /// Wakes the writer when Redis goes down, so it starts retrying now
    /// rather than at its next refresh.
    pub(super) went_down: tokio::sync::Notify,
}

impl Health {
    fn new(metrics: Arc<Metrics>) -> Health {
        metrics.redis_up.set(0.0);
        Health {
            state: AtomicU8::new(UNKNOWN),
            error: Mutex::new(String::new()),
            metrics,
            went_down: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_down(&self) -> bool {
        self.state.load(Ordering::SeqCst) == DOWN
    }

    pub fn error(&self) -> String {
        self.lock().clone()
    }

    /// Redis answered (and, from the writer, holds this node's figures).
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
            tracing::warn!(error = why, "redis unavailable: cluster stats degraded");
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

type ReadOutcome = Result<Arc<ClusterRead>, String>;

/// The settings the Redis backend needs.
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    pub node: String,
    pub ttl_ms: u64,
}

pub struct RedisBackend {
    pub(super) node: String,
    pub(super) keys: Keys,
    pub(super) ttl_ms: u64,
    pub(super) conn: ConnectionManager,
    pub(super) sub: ConnectionManager,
    /// Tags this process's relay messages, so it skips its own echo.
    pub(super) origin: Arc<str>,
    pub(super) health: Arc<Health>,
    pub(super) metrics: Arc<Metrics>,
    /// What this node last wrote; held across a write so that `leave` is
    /// never overtaken by one.
    pub(super) written: tokio::sync::Mutex<super::figures::Written>,
    /// The read in flight, shared by every query that arrives meanwhile.
    reads: Mutex<Option<watch::Receiver<Option<ReadOutcome>>>>,
    pushes: Mutex<Option<mpsc::UnboundedReceiver<PushInfo>>>,
    relay: Mutex<Option<RelayReceiver>>,
    pub(super) complaints: Throttle,
    pub(super) registry: Arc<Registry>,
    pub(super) reporter: Arc<Reporter>,
    pub(super) bus: Arc<Bus>,
}

fn manager_config() -> ConnectionManagerConfig {
    // `usize::MAX` retries: a finite count gives up after a long outage.
    ConnectionManagerConfig::new()
        .set_number_of_retries(usize::MAX)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(150))
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)))
}

impl RedisBackend {
    /// Sets up the connections without waiting for Redis: a node starts and
    /// serves its sockets even while Redis is down.
    pub fn new(settings: RedisSettings, parts: Parts) -> Result<RedisBackend, RedisSetupError> {
        let metrics = parts.metrics;
        let info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(RedisSetupError::Url)?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(resp3);
        let client = ::redis::Client::open(info).map_err(RedisSetupError::Url)?;
        let health = Arc::new(Health::new(metrics.clone()));
        // The command connection hears of a lost connection at once (RESP3),
        // so queries answer degraded right away instead of timing out.
        let watcher = health.clone();
        let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            if push.kind == PushKind::Disconnection {
                watcher.down("redis connection lost");
            }
            Ok(())
        };
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            manager_config().set_push_sender(on_push),
        )
        .map_err(RedisSetupError::Connection)?;
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let sub = ConnectionManager::new_lazy_with_config(
            client,
            manager_config()
                .set_push_sender(push_tx)
                .set_automatic_resubscription(),
        )
        .map_err(RedisSetupError::Connection)?;
        Ok(RedisBackend {
            origin: super::relay::origin_id(&settings.node).into(),
            keys: Keys::new(&settings.prefix, &settings.node),
            node: settings.node,
            ttl_ms: settings.ttl_ms,
            conn,
            sub,
            health,
            metrics,
            written: tokio::sync::Mutex::new(super::figures::Written::default()),
            reads: Mutex::new(None),
            pushes: Mutex::new(Some(push_rx)),
            relay: Mutex::new(Some(parts.relay)),
            complaints: Throttle::new(),
            registry: parts.registry,
            reporter: parts.reporter,
            bus: parts.bus,
        })
    }

    /// Starts the writer of this node's figures and the two halves of the
    /// relay, each ending when `stop` is cancelled.
    pub fn spawn(self: &Arc<Self>, tasks: &TaskTracker, stop: &CancellationToken) {
        let relay = self.relay.lock().unwrap_or_else(|e| e.into_inner()).take();
        let pushes = self.pushes.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (Some(relay), Some(pushes)) = (relay, pushes) else {
            return;
        };
        tasks.spawn(
            stop.clone()
                .run_until_cancelled_owned(super::figures::run(self.clone())),
        );
        tasks.spawn(
            stop.clone()
                .run_until_cancelled_owned(super::relay::publish(self.clone(), relay)),
        );
        tasks.spawn(
            stop.clone()
                .run_until_cancelled_owned(super::relay::subscribe(self.clone(), pushes)),
        );
    }

    /// The degraded answer when Redis is known to be down, else `None`.
    pub fn stats_now(&self) -> Option<String> {
        self.health
            .is_down()
            .then(|| self.reporter.alone(Some(&self.health.error())))
    }

    /// ClusterStats: every live node from Redis in one round trip, or this
    /// node's figures marked degraded when Redis fails or takes > 500 ms.
    pub async fn stats(&self) -> String {
        if let Some(degraded) = self.stats_now() {
            return degraded;
        }
        let outcome = match tokio::time::timeout(QUERY_TIMEOUT, self.read()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let why = "redis unreachable or slower than 500 ms".to_owned();
                self.health.down(&why);
                Err(why)
            }
        };
        match outcome {
            Ok(read) => {
                let (json, census) = view::cluster_json(&self.reporter, &read);
                self.record_census(census);
                json
            }
            Err(why) => self.reporter.alone(Some(&why)),
        }
    }

    pub(super) fn record_census(&self, census: Census) {
        self.metrics.cluster_nodes.set(census.live as f64);
        self.metrics
            .oldest_node_age
            .set(census.oldest_age_ms as f64 / 1000.0);
    }

    /// One read of the cluster, shared by all callers that arrive while it
    /// is in flight (a burst of queries costs Redis one script run).
    async fn read(&self) -> ReadOutcome {
        loop {
            let role = {
                let mut slot = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                match slot.as_ref() {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        *slot = Some(rx);
                        Ok(tx)
                    }
                }
            };
            let mut follower = match role {
                Ok(leader) => return self.lead_read(leader).await,
                Err(follower) => follower,
            };
            let shared = follower
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|outcome| outcome.clone());
            match shared {
                Some(outcome) => return outcome,
                // The leader's query was dropped: lead the next read.
                None => continue,
            }
        }
    }

    async fn lead_read(&self, tx: watch::Sender<Option<ReadOutcome>>) -> ReadOutcome {
        /// Frees the slot however the read ends, even if it is dropped.
        struct Release<'a>(&'a Mutex<Option<watch::Receiver<Option<ReadOutcome>>>>);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        let _release = Release(&self.reads);
        let mut conn = self.conn.clone();
        let reply = keys::READ_SCRIPT
            .key(&self.keys.registry)
            .arg(&self.keys.prefix)
            .arg("full")
            .invoke_async::<Value>(&mut conn)
            .await;
        let outcome = match reply {
            Ok(v) => ClusterRead::parse(&v)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
            Err(e) => {
                let why = describe(&e);
                self.health.down(&why);
                Err(why)
            }
        };
        let _ = tx.send(Some(outcome.clone()));
        outcome
    }

    /// Removes this node from Redis at once (graceful shutdown); no write
    /// of its figures can follow.
    pub async fn leave(&self) {
        let mut written = self.written.lock().await;
        written.left = true;
        let mut conn = self.conn.clone();
        let mut pipe = ::redis::pipe();
        pipe.cmd("DEL")
            .arg(&self.keys.meta)
            .arg(&self.keys.topics)
            .ignore()
            .cmd("ZREM")
            .arg(&self.keys.registry)
            .arg(&self.node)
            .ignore();
        match tokio::time::timeout(LEAVE_TIMEOUT, pipe.exec_async(&mut conn)).await {
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
