//! Reading other nodes' snapshots, for when the view cannot follow a node's
//! deltas: at start, after the subscription comes back from an outage, and
//! when a node's sequence has a gap. A snapshot read is one pipeline on one
//! hash slot; a node whose snapshot is gone has left (or expired). A
//! snapshot tells how long ago it was written, so reading one of a node
//! that died does not make it look alive. Which write a snapshot holds is
//! also read alone, cheaply, to tell a node that went silent from one whose
//! deltas stopped arriving.

use super::{bounded, wire, RedisBackend, COMMAND_TIMEOUT};
use crate::cluster::keys::Keys;
use crate::cluster::view::{Delta, Totals};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::Duration;

/// A node's snapshot, as a full delta, and how long ago the node wrote it
/// (by the Redis clock, which wrote its `at` too).
pub struct Snapshot {
    pub delta: Delta,
    pub age: Duration,
}

/// The names in the registry of nodes.
pub async fn names(redis: &RedisBackend) -> Result<Vec<String>, String> {
    let mut conn = redis.conn.clone();
    let mut cmd = ::redis::cmd("ZRANGE");
    cmd.arg(&redis.keys.registry).arg(0).arg(-1);
    bounded(redis, 1, cmd.query_async::<Vec<String>>(&mut conn)).await
}

/// Which write of which process a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWrite {
    pub origin: String,
    pub seq: u64,
}

/// The write `node`'s snapshot holds, or `None` when it has none (gone).
pub async fn last_write(redis: &RedisBackend, node: &str) -> Result<Option<LastWrite>, String> {
    let [meta_key, _, _] = Keys::snapshot(&redis.keys.prefix, node);
    let mut cmd = ::redis::cmd("HGETALL");
    cmd.arg(&meta_key);
    let mut conn = redis.conn.clone();
    let meta: HashMap<String, String> = bounded(redis, 1, cmd.query_async(&mut conn)).await?;
    if meta.is_empty() {
        return Ok(None);
    }
    Ok(Some(LastWrite::of(&meta)))
}

impl LastWrite {
    /// The write a snapshot's meta hash names; `last_write` and `snapshot`
    /// both read it here, so both agree with the view.
    fn of(meta: &HashMap<String, String>) -> LastWrite {
        LastWrite {
            origin: meta.get("o").cloned().unwrap_or_default(),
            seq: meta
                .get("q")
                .and_then(|q| q.parse::<u64>().ok())
                .unwrap_or(0),
        }
    }
}

/// `node`'s snapshot, or `None` when it has none (gone).
pub async fn snapshot(redis: &RedisBackend, node: &str) -> Result<Option<Snapshot>, String> {
    let [meta_key, topics_key, presence_key] = Keys::snapshot(&redis.keys.prefix, node);
    let mut pipe = ::redis::pipe();
    pipe.cmd("HGETALL")
        .arg(&meta_key)
        .cmd("HGETALL")
        .arg(&topics_key)
        .cmd("HGETALL")
        .arg(&presence_key)
        // Keyless: it goes to the same server as the rest.
        .cmd("TIME");
    let mut conn = redis.conn.clone();
    type Reply = (
        HashMap<String, String>,
        HashMap<String, u64>,
        HashMap<String, String>,
        Vec<u64>,
    );
    let (meta, topics, presence, time): Reply =
        bounded(redis, 4, pipe.query_async(&mut conn)).await?;
    if meta.is_empty() {
        // Gone: drop it from the registry too, so later starts skip it.
        let mut cmd = ::redis::cmd("ZREM");
        cmd.arg(&redis.keys.registry).arg(node);
        redis.metrics.redis_commands.increment(1);
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, cmd.exec_async(&mut conn)).await;
        return Ok(None);
    }
    let number = |field: &str| meta.get(field).and_then(|v| v.parse::<u64>().ok());
    let (Some(c), Some(s), Some(k)) = (number("c"), number("s"), number("k")) else {
        let why = format!("the snapshot of node {node:?} is incomplete");
        redis.health.down(&why);
        return Err(why);
    };
    let now_ms = match time.as_slice() {
        [secs, micros] => secs * 1000 + micros / 1000,
        _ => 0,
    };
    let age = Duration::from_millis(number("at").map_or(0, |at| now_ms.saturating_sub(at)));
    let LastWrite { origin, seq } = LastWrite::of(&meta);
    let delta = Delta {
        node: node.to_owned(),
        origin,
        seq,
        full: true,
        totals: Totals {
            connections: c,
            stream: s,
            sockets: k,
        },
        topics: topics.into_iter().filter(|(_, n)| *n > 0).collect(),
        presence: presence
            .into_iter()
            .filter_map(|(phx_ref, entry)| {
                type Entry = (String, String, Box<RawValue>);
                let (topic, key, meta): Entry = serde_json::from_str(&entry).ok()?;
                wire::presence_change((topic, phx_ref, Some(key), Some(meta))).ok()
            })
            .collect(),
    };
    Ok(Some(Snapshot { delta, age }))
}
