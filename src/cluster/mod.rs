//! Where cluster-wide figures come from. `Local` answers from this node
//! alone (no `--redis`); `Redis` keeps every node's figures in Redis and
//! relays bus messages between nodes. The rest of the code asks this module
//! and never knows which one runs.
//!
//! An enum rather than a trait object: there are exactly two backends, and
//! an enum keeps `async fn` without boxing every call.

mod figures;
pub mod keys;
pub mod redis;
mod relay;
pub mod view;

use crate::context::Ctx;
use crate::stats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub use self::redis::{RedisCluster, RedisSetupError};
pub use self::relay::RedisRelay;

pub enum Cluster {
    Local,
    Redis(Box<RedisCluster>),
}

impl Cluster {
    /// ClusterStats as JSON text.
    pub async fn stats(&self, ctx: &Ctx) -> String {
        match self {
            Cluster::Local => stats::local_cluster_json(&ctx.tally, None),
            Cluster::Redis(r) => r.stats(ctx).await,
        }
    }

    /// The answer when no waiting is needed (single node, or Redis known
    /// to be down).
    pub fn stats_now(&self, ctx: &Ctx) -> Option<String> {
        match self {
            Cluster::Local => Some(stats::local_cluster_json(&ctx.tally, None)),
            Cluster::Redis(r) => r.stats_now(ctx),
        }
    }

    /// Starts the backend's background work; each task ends on shutdown.
    pub fn spawn(ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>) {
        if !matches!(ctx.cluster(), Cluster::Redis(_)) {
            return;
        }
        let c = ctx.clone();
        tasks.spawn(async move {
            if let Cluster::Redis(r) = c.cluster() {
                figures::run(c.clone(), r).await;
            }
        });
        let c = ctx.clone();
        tasks.spawn(async move {
            if let Cluster::Redis(r) = c.cluster() {
                relay::publish(c.clone(), r).await;
            }
        });
        let c = ctx.clone();
        tasks.spawn(async move {
            if let Cluster::Redis(r) = c.cluster() {
                relay::subscribe(c.clone(), r).await;
            }
        });
    }

    /// Graceful shutdown: take this node out of the cluster at once.
    pub async fn leave(&self) {
        if let Cluster::Redis(r) = self {
            r.leave().await;
        }
    }
}

/// At most one log line per interval for a repeated complaint.
pub struct Throttle {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` (n lines suppressed since the last) when a line may be logged.
    pub fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(Instant::now());
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn throttle_lets_one_line_through_then_counts() {
        let t = Throttle::new();
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
    }
}
