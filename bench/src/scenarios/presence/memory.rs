//! `bench presence`'s memory comparison (with `--server-pid`): before the
//! presence members join, the same N sockets in the same layout join the
//! plain topic (allowed, not a presence topic); each node's RSS is read
//! once steady, at least `--settle` s after they have all joined
//! (`node::steady_rss`), then they close and the run
//! waits for the nodes' socket counts to come back. The presence phase is
//! read the same way once the presence members have joined. Plain first:
//! the allocator keeps what the plain sockets freed, and the presence
//! sockets reuse it, so the difference is what presence adds.
//!
//! Per node: extra = RSS_presence − RSS_plain, over the members connected
//! to it. With every node's pid, Σ extra / N is what one presence member
//! costs the cluster beyond a plain membership (its meta is held on every
//! node); with one node, it is the brief's (RSS_presence − RSS_plain) / N.
//! Each node's extra over the N metas it holds (every member's) is what a
//! meta costs where it is held: with one node, the same figure.

use super::super::measure;
use super::members::{self, Counters};
use super::node::{self, Kept};
use crate::{BenchArgs, Endpoint};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The plain phase's RSS per node, or why it was skipped.
pub(super) struct Plain {
    pub(super) rss: Vec<Option<u64>>,
    pub(super) report: Value,
}

pub(super) async fn plain_phase(
    args: &BenchArgs,
    eps: &[Endpoint],
    topic: &str,
    pids: &[Option<u32>],
) -> Result<Plain, String> {
    match node::presence_stats(&eps[0], topic).await {
        Kept::Yes { .. } => {
            return Err(format!(
                "{topic} is a presence topic on {} (pass --plain-topic, an allowed topic the node's --presence-topic does not match)",
                eps[0].host
            ))
        }
        Kept::No | Kept::Unknown => {}
    }
    let mut base = Vec::new();
    for ep in eps {
        base.push(measure::counts(ep).await.ok().flatten().map(|c| c.sockets));
    }
    let counters = Arc::new(Counters::new(eps.len()));
    let m = members::open(args, eps, topic, false, &counters, None).await;
    if m.opened < args.sockets {
        let report = m.report.clone();
        m.close().await;
        return Err(format!("plain members did not all join: {report}"));
    }
    let (rss, waited) = node::steady_rss(pids, args.settle).await;
    let report = m.report.clone();
    m.close().await;
    // Back to where the nodes were before.
    for (ep, base) in eps.iter().zip(base) {
        if let Some(base) = base {
            let _ = measure::counts_until(ep, Duration::from_secs(10), |c| c.sockets <= base).await;
        }
    }
    Ok(Plain {
        rss,
        report: json!({"topic": topic, "members": report["opened"], "seconds": report["seconds"], "rss_read_after_s": waited}),
    })
}

/// The comparison's report: per node and in all.
pub(super) fn compare(
    before: &[Option<u64>],
    plain: &[Option<u64>],
    presence: &[Option<u64>],
    per_node: &[usize],
) -> Value {
    let mut nodes = Vec::new();
    let (mut extra_all, mut members_all, mut measured) = (0i64, 0u64, 0i64);
    // Every node holds every member's meta.
    let held = per_node.iter().sum::<usize>() as i64;
    for (i, &after) in presence.iter().enumerate() {
        let extra = match (plain.get(i).copied().flatten(), after) {
            (Some(a), Some(b)) => Some(b as i64 - a as i64),
            _ => None,
        };
        let members = per_node.get(i).copied().unwrap_or(0) as u64;
        if let Some(e) = extra {
            extra_all += e;
            members_all += members;
            measured += 1;
        }
        nodes.push(json!({
            "before": before.get(i).copied().flatten(),
            "plain": plain.get(i).copied().flatten(),
            "presence": after,
            "local_members": members,
            "extra_bytes": extra,
            "per_local_member": extra.and_then(|e| (members > 0).then(|| e / members as i64)),
            "per_meta_held": extra.and_then(|e| (held > 0).then(|| e / held)),
        }));
    }
    json!({
        "nodes": nodes,
        "bytes_per_presence_member": (members_all > 0).then(|| extra_all / members_all as i64),
        "bytes_per_meta_held": (measured > 0 && held > 0).then(|| extra_all / (measured * held)),
        "members_counted": members_all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_difference_is_taken_over_the_nodes_with_a_pid() {
        let r = compare(
            &[Some(10), None],
            &[Some(1_000), None],
            &[Some(301_000), None],
            &[100, 100],
        );
        assert_eq!(r["nodes"][0]["extra_bytes"], 300_000);
        assert_eq!(r["nodes"][0]["per_local_member"], 3000);
        assert!(r["nodes"][1]["extra_bytes"].is_null());
        assert_eq!(r["bytes_per_presence_member"], 3000);
        // Both nodes' members' metas are held on node 0.
        assert_eq!(r["nodes"][0]["per_meta_held"], 1500);
        assert_eq!(r["bytes_per_meta_held"], 1500);
        assert_eq!(r["members_counted"], 100);
        let none = compare(&[None], &[None], &[None], &[5]);
        assert!(none["bytes_per_presence_member"].is_null());
    }
}
