//! Where cluster-wide figures come from. A single node answers from its own
//! figures; with `--redis` the Redis backend keeps every node's figures in
//! Redis and relays bus messages between nodes. The rest of the code asks
//! `Cluster` and never knows which one runs.

mod figures;
pub mod keys;
pub mod redis;
mod relay;
pub mod view;

use crate::bus::{Bus, RelayReceiver};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::stats::Reporter;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::redis::{RedisBackend, RedisSettings, RedisSetupError};

/// What the Redis backend is built from: the components it uses.
pub struct Parts {
    pub registry: Arc<Registry>,
    pub reporter: Arc<Reporter>,
    pub bus: Arc<Bus>,
    pub metrics: Arc<Metrics>,
    pub relay: RelayReceiver,
}

pub struct Cluster {
    reporter: Arc<Reporter>,
    redis: Option<Arc<RedisBackend>>,
}

impl Cluster {
    /// A node on its own: cluster stats are its own figures.
    pub fn single(reporter: Arc<Reporter>) -> Cluster {
        Cluster {
            reporter,
            redis: None,
        }
    }

    /// A node of a cluster sharing one Redis. Nothing waits for Redis here:
    /// the node starts and serves its sockets even while Redis is down.
    pub fn redis(settings: RedisSettings, parts: Parts) -> Result<Cluster, RedisSetupError> {
        let reporter = parts.reporter.clone();
        let backend = RedisBackend::new(settings, parts)?;
        Ok(Cluster {
            reporter,
            redis: Some(Arc::new(backend)),
        })
    }

    /// ClusterStats as JSON text.
    pub async fn stats(&self) -> String {
        match &self.redis {
            None => self.reporter.alone(None),
            Some(r) => r.stats().await,
        }
    }

    /// The answer when no waiting is needed (single node, or Redis known
    /// to be down).
    pub fn stats_now(&self) -> Option<String> {
        match &self.redis {
            None => Some(self.reporter.alone(None)),
            Some(r) => r.stats_now(),
        }
    }

    /// Starts the backend's background work; each task ends when `stop` is
    /// cancelled.
    pub fn spawn(&self, tasks: &TaskTracker, stop: &CancellationToken) {
        if let Some(r) = &self.redis {
            r.spawn(tasks, stop);
        }
    }

    /// Graceful shutdown: take this node out of the cluster at once.
    pub async fn leave(&self) {
        if let Some(r) = &self.redis {
            r.leave().await;
        }
    }
}
