//! Keeps this node's snapshot in Redis and tells the other nodes what
//! changed. At most 100 ms after a change (so churn costs Redis at most ten
//! writes a second per node), and at least every min(ttl/3, 1 s) so the TTL
//! never lapses while the node lives, the writer sends the topics whose
//! counts changed (absolute values) to the snapshot keys, then publishes the
//! same as the next delta of this process's sequence on the view channel.
//! After any failure, or when Redis turns out to have lost the snapshot, the
//! next write (and its delta) carries everything.

use super::{bounded, wire, RedisBackend};
use crate::cluster::keys;
use crate::cluster::view::{Delta, Totals};
use ::redis::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Longest a change waits before it is written.
pub const BATCH: Duration = Duration::from_millis(100);
/// How often a node retries while Redis is down.
pub const RETRY: Duration = Duration::from_millis(100);

/// What this node has told Redis, as far as it knows.
#[derive(Default)]
pub struct Written {
    /// Set once a write succeeded; until then (and after any failure) the
    /// next write replaces everything.
    synced: bool,
    /// Set by graceful shutdown: nothing more is written.
    pub left: bool,
    /// The last sequence number used.
    seq: u64,
    /// The last write failed.
    failed: bool,
}

/// What a write found.
enum Outcome {
    Written,
    /// A partial write found no snapshot in Redis: nothing was written.
    Lost,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The refresh period for a TTL: a third of it, at most a second.
pub fn refresh_period(ttl_ms: u64) -> Duration {
    Duration::from_millis((ttl_ms / 3).clamp(10, 1000))
}

/// Writes after changes and refreshes on a timer, until the task is dropped.
pub async fn run(redis: Arc<RedisBackend>) {
    let mut changes = redis.registry.watch();
    changes.borrow_and_update();
    let refresh = refresh_period(redis.ttl_ms);
    let mut last = Instant::now()
        .checked_sub(refresh)
        .unwrap_or_else(Instant::now);
    let mut dirty = true;
    loop {
        let wait = if redis.health.is_down() {
            RETRY
        } else if dirty {
            BATCH
        } else {
            refresh
        };
        tokio::select! {
            _ = redis.health.went_down.notified() => dirty = true,
            changed = changes.changed(), if !dirty => {
                if changed.is_err() {
                    return;
                }
                dirty = true;
            }
            // Presence metas change just after the counts (a join is
            // tracked after its membership, untracked after it ends): a
            // write woken by the count may have run before the meta was
            // queued, and the meta must not wait for the next refresh.
            _ = redis.presence.outgoing_changed(), if !dirty => dirty = true,
            _ = tokio::time::sleep_until(last + wait) => {
                changes.borrow_and_update();
                last = Instant::now();
                // A change that lands during the write is caught by
                // `changed()` on the next turn.
                dirty = !flush(&redis).await;
            }
        }
    }
}

/// This node's figures as the next delta: everything when `full`, else the
/// topics that changed since the last write.
fn next_delta(redis: &RedisBackend, written: &mut Written, full: bool) -> Delta {
    let registry = &redis.registry;
    // Taken either way, so a full write also starts the next diff afresh.
    let changed = registry.take_changed();
    let topics: Vec<(String, u64)> = if full {
        registry
            .listing()
            .topics
            .iter()
            .map(|(t, n)| (t.to_string(), *n))
            .collect()
    } else {
        changed
            .iter()
            .map(|t| (t.to_string(), registry.count(t)))
            .collect()
    };
    let presence = if full {
        redis.presence.local_all()
    } else {
        redis.presence.take_outgoing()
    };
    let totals = registry.totals();
    written.seq += 1;
    Delta {
        node: redis.node.clone(),
        origin: redis.origin.to_string(),
        seq: written.seq,
        full,
        totals: Totals {
            connections: totals.memberships,
            stream: registry.stream_count(),
            sockets: totals.sockets,
        },
        topics,
        presence,
    }
}

/// One write of this node's figures and its delta; true when Redis has
/// them.
pub async fn flush(redis: &RedisBackend) -> bool {
    let mut written = redis.written.lock().await;
    if written.left {
        return true;
    }
    let full = !written.synced;
    let mut delta = next_delta(redis, &mut written, full);
    let mut outcome = write(redis, &delta).await;
    tracing::debug!(
        full = delta.full,
        seq = delta.seq,
        ok = outcome.is_ok(),
        "wrote figures"
    );
    if matches!(outcome, Ok(Outcome::Lost)) {
        // Redis lost the snapshot (restarted without data, or the TTL
        // lapsed during an outage): write it all at once.
        tracing::info!("redis had lost this node's figures: writing them all");
        delta = next_delta(redis, &mut written, true);
        outcome = write(redis, &delta).await;
    }
    match outcome {
        Ok(Outcome::Written) => {
            written.synced = true;
            written.failed = false;
            redis.health.up();
            announce(redis, &delta).await;
            true
        }
        Ok(Outcome::Lost) => {
            written.synced = false;
            false
        }
        Err(why) => {
            written.synced = false;
            // The first failure marked Redis down unless something else
            // was answered meanwhile (`Health::failed`); a second in a row
            // does so whatever else Redis answers, so a node whose figures
            // cannot be written never passes for up.
            if std::mem::replace(&mut written.failed, true) {
                redis.health.down(&why);
            }
            false
        }
    }
}

/// Writes the delta's figures into this node's snapshot keys.
async fn write(redis: &RedisBackend, delta: &Delta) -> Result<Outcome, String> {
    let mut invocation = keys::WRITE.key(&redis.keys.meta);
    invocation
        .key(&redis.keys.topics)
        .key(&redis.keys.presence)
        .arg(redis.ttl_ms)
        .arg(if delta.full { "1" } else { "0" })
        .arg(delta.totals.connections)
        .arg(delta.totals.stream)
        .arg(delta.totals.sockets)
        .arg(&*redis.origin)
        .arg(delta.seq)
        .arg(delta.topics.len());
    for (topic, n) in &delta.topics {
        invocation.arg(topic).arg(*n);
    }
    let joins: Vec<_> = delta.presence.iter().filter(|p| p.join.is_some()).collect();
    invocation.arg(joins.len());
    for p in joins {
        if let Some((key, meta)) = &p.join {
            let entry = (&*p.topic, &**key, &**meta);
            invocation
                .arg(&*p.phx_ref)
                .arg(crate::stats::to_json(&entry));
        }
    }
    for p in delta.presence.iter().filter(|p| p.join.is_none()) {
        invocation.arg(&*p.phx_ref);
    }
    let mut conn = redis.conn.clone();
    let reply = bounded(redis, 1, invocation.invoke_async::<Value>(&mut conn)).await?;
    match reply {
        Value::Int(-1) => Ok(Outcome::Lost),
        Value::Array(written_by) => {
            let previous = match written_by.get(1) {
                Some(Value::BulkString(b)) => b.as_slice(),
                _ => &[],
            };
            if !delta.full && !previous.is_empty() && previous != redis.origin.as_bytes() {
                if let Some(more) = redis.complaints.allow() {
                    tracing::error!(
                        node = %redis.node,
                        suppressed = more,
                        "another process writes figures as this node: give every node a unique --node"
                    );
                }
            }
            Ok(Outcome::Written)
        }
        _ => {
            let why = "unexpected reply from redis to a write";
            redis.health.down(why);
            Err(why.into())
        }
    }
}

/// Publishes the delta of a write that succeeded, and keeps this node in
/// the registry of nodes. A delta that does not arrive shows up at the
/// other nodes as a gap in the sequence, and they read the snapshot.
async fn announce(redis: &RedisBackend, delta: &Delta) {
    let publish = redis.publish(&redis.keys.view, wire::delta(delta));
    let mut zadd = ::redis::cmd("ZADD");
    zadd.arg(&redis.keys.registry)
        .arg(wall_ms())
        .arg(&redis.node);
    let mut conn = redis.conn.clone();
    // Two commands: on a Redis Cluster they live on different slots.
    let both = async {
        publish.exec_async(&mut conn).await?;
        zadd.exec_async(&mut conn).await
    };
    // A failure marks Redis down (`bounded`); the other nodes see a gap.
    let _ = bounded(redis, 2, both).await;
}

#[cfg(test)]
mod tests {
    use super::refresh_period;
    use std::time::Duration;

    #[test]
    fn refresh_is_a_third_of_the_ttl_at_most_a_second() {
        assert_eq!(refresh_period(5000), Duration::from_secs(1));
        assert_eq!(refresh_period(1500), Duration::from_millis(500));
        assert_eq!(refresh_period(3), Duration::from_millis(10));
    }
}
