//! Where cluster-wide figures come from. A single node answers from its own
//! figures; with `--redis` every node keeps a view of every other node in
//! memory (fed through Redis by the backend), so cluster stats and occupancy
//! never wait on Redis. The rest of the code asks `Cluster` and never knows
//! which one runs.

mod answers;
mod keys;
mod redis;
pub mod view;

use crate::stats::{Filter, Reporter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use view::View;

pub use self::redis::{Parts, RedisAccess, RedisSettings, RedisSetupError};

/// A name for this process, unique in the cluster: it tags this node's
/// messages (so it skips its own echo), starts its delta sequence (so a
/// restarted node is told from a running one), and prefixes its
/// presence refs.
pub fn origin_id(node: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{node}/{}/{nanos:x}/{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Cluster {
    reporter: Arc<Reporter>,
    view: Arc<View>,
    redis: Option<Arc<redis::RedisBackend>>,
    rendered: Mutex<answers::Cache>,
}

impl Cluster {
    /// A node on its own: cluster answers are its own figures.
    pub fn single(reporter: Arc<Reporter>) -> Cluster {
        Cluster {
            reporter,
            view: Arc::new(View::new()),
            redis: None,
            rendered: Mutex::default(),
        }
    }

    /// A node of a cluster sharing one Redis. Nothing waits for Redis here:
    /// the node starts and serves its sockets even while Redis is down.
    pub fn redis(
        settings: RedisSettings,
        reporter: Arc<Reporter>,
        parts: Parts,
    ) -> Result<Cluster, RedisSetupError> {
        let view = Arc::new(View::new());
        let backend = redis::RedisBackend::new(settings, parts, view.clone())?;
        Ok(Cluster {
            reporter,
            view,
            redis: Some(Arc::new(backend)),
            rendered: Mutex::default(),
        })
    }

    /// `Err(why)` while cluster answers must be this node's own, degraded;
    /// `Ok(None)` on a single node; `Ok(Some(view))` when the view holds.
    fn view(&self) -> Result<Option<&View>, String> {
        match &self.redis {
            None => Ok(None),
            Some(r) => match r.degraded() {
                Some(why) => Err(why),
                None => Ok(Some(&self.view)),
            },
        }
    }

    /// Whether cluster answers are this node's own for now (Redis down, or
    /// the view catching up).
    pub fn degraded(&self) -> bool {
        self.view().is_err()
    }

    /// ClusterStats as JSON text, from memory.
    pub fn stats(&self, filter: &Filter) -> String {
        match self.view() {
            Ok(None) => self.reporter.alone(filter, None),
            Ok(Some(view)) => answers::cluster_stats(&self.reporter, view, &self.rendered, filter),
            Err(why) => self.reporter.alone(filter, Some(&why)),
        }
    }

    /// The `get_occupancy` answer for `topics` (SPEC §7.2), from memory.
    pub fn occupancy(&self, topics: &[String]) -> String {
        match self.view() {
            Ok(view) => answers::occupancy(&self.reporter, view, None, topics),
            Err(why) => answers::occupancy(&self.reporter, None, Some(&why), topics),
        }
    }

    /// `topic`'s cluster-wide count: this node's, plus the other live
    /// nodes' while the view holds.
    pub fn connections(&self, topic: &str) -> u64 {
        self.count(topic).0
    }

    /// `connections(topic)`, and whether that is this node's count alone
    /// because the cluster is degraded (one look at the view for both).
    pub fn count(&self, topic: &str) -> (u64, bool) {
        let local = self.reporter.count(topic);
        match self.view() {
            Ok(Some(view)) => (local + view.with_topics(|t| t.total(topic)), false),
            Ok(None) => (local, false),
            Err(_) => (local, true),
        }
    }

    /// Starts the backend's background work; each task ends when `stop` is
    /// cancelled.
    pub fn spawn(&self, tasks: &TaskTracker, stop: &CancellationToken) {
        if let Some(r) = &self.redis {
            r.spawn(tasks, stop);
        }
    }

    /// A command connection to Redis and the names to use there, for the
    /// webhook store; `None` on a single node.
    pub fn redis_access(&self) -> Option<RedisAccess> {
        self.redis.as_ref().map(|r| r.access())
    }

    /// Graceful shutdown: take this node out of the cluster at once.
    pub async fn leave(&self) {
        if let Some(r) = &self.redis {
            r.leave().await;
        }
    }
}
