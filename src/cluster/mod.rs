//! Where cluster-wide figures come from. `Local` answers from this node
//! alone (no `--redis`); `Redis` keeps every node's figures in Redis and
//! relays bus messages between nodes. The rest of the code asks this module
//! and never knows which one runs.
//!
//! An enum rather than a trait object: there are exactly two backends, and
//! an enum keeps `async fn` without boxing every call.

use crate::context::Ctx;
use crate::stats;

pub enum Cluster {
    Local,
}

impl Cluster {
    /// Whether cluster stats can be answered without waiting on anything.
    pub fn is_local(&self) -> bool {
        matches!(self, Cluster::Local)
    }

    /// ClusterStats as JSON text.
    pub async fn stats(&self, ctx: &Ctx) -> String {
        match self {
            Cluster::Local => stats::local_cluster_json(&ctx.tally, None),
        }
    }

    /// The answer when no waiting is needed (single node).
    pub fn stats_now(&self, ctx: &Ctx) -> Option<String> {
        match self {
            Cluster::Local => Some(stats::local_cluster_json(&ctx.tally, None)),
        }
    }
}
