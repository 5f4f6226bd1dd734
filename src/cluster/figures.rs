//! Keeps this node's own figures in Redis: absolute values from the registry,
//! written at most 100 ms after a change (so churn costs Redis at most ten
//! writes a second per node) and refreshed every min(ttl/3, 1 s) so the TTL
//! never lapses while the node lives. A write sends only what changed since
//! the last one Redis acknowledged; after any failure, or when Redis turns
//! out to have lost the figures, the next write sends everything.

use super::keys;
use super::redis::{describe, RedisBackend, WRITE_TIMEOUT};
use super::view::Census;
use crate::topics::STREAM;
use ::redis::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Longest a change waits before it is written.
pub const BATCH: Duration = Duration::from_millis(100);
/// How often the writer counts the live nodes (for the metrics).
const CENSUS_EVERY: Duration = Duration::from_secs(1);
/// How often a node retries while Redis is down.
pub const RETRY: Duration = Duration::from_millis(100);

/// What Redis holds for this node, as far as this node knows.
#[derive(Default)]
pub struct Written {
    topics: HashMap<Arc<str>, u64>,
    /// Set until a write succeeds; the next write then replaces everything.
    synced: bool,
    /// Set by graceful shutdown: nothing more is written.
    pub left: bool,
    /// When the live nodes were last counted for the metrics.
    counted: Option<Instant>,
}

/// What a write found.
enum Outcome {
    /// Written; with the census when one was asked for.
    Written(Option<Census>),
    /// A partial write found no figures in Redis: nothing was written.
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
            _ = tokio::time::sleep_until(last + wait) => {
                changes.borrow_and_update();
                last = Instant::now();
                let flushed = flush(&redis).await;
                // A change that landed during the write is caught by
                // `changed()` on the next turn.
                dirty = !flushed;
            }
        }
    }
}

/// One write of this node's figures; true when Redis has them.
pub async fn flush(redis: &RedisBackend) -> bool {
    let mut written = redis.written.lock().await;
    if written.left {
        return true;
    }
    let topics = redis.registry.listing().topics.clone();
    let sockets = redis.registry.sockets();
    let full = !written.synced;
    // Counting live nodes costs Redis one lookup per node: once a second
    // is enough for the metrics.
    let count = written.counted.is_none_or(|t| t.elapsed() >= CENSUS_EVERY);
    let mut outcome = write(redis, &written, &topics, sockets, full, count).await;
    tracing::debug!(full, ok = outcome.is_ok(), "wrote figures");
    if matches!(outcome, Ok(Outcome::Lost)) {
        tracing::info!("redis had lost this node's figures: writing them all");
        // Redis lost our figures (restart without data, or the TTL lapsed
        // during an outage): write them all at once.
        outcome = write(redis, &written, &topics, sockets, true, count).await;
    }
    match outcome {
        Ok(Outcome::Written(census)) => {
            written.topics = topics.into_iter().collect();
            written.synced = true;
            redis.health.up();
            if let Some(census) = census {
                written.counted = Some(Instant::now());
                redis.record_census(census);
            }
            true
        }
        Ok(Outcome::Lost) => {
            written.synced = false;
            false
        }
        Err(why) => {
            written.synced = false;
            redis.health.down(&why);
            false
        }
    }
}

/// Sends one write, and a census of the live nodes when `count`.
async fn write(
    redis: &RedisBackend,
    written: &Written,
    topics: &[(Arc<str>, u64)],
    sockets: u64,
    full: bool,
    count: bool,
) -> Result<Outcome, String> {
    let connections: u64 = topics.iter().map(|(_, n)| n).sum();
    let stream = topics
        .iter()
        .find(|(t, _)| &**t == STREAM)
        .map_or(0, |(_, n)| *n);
    let mut eval = ::redis::cmd("EVAL");
    eval.arg(keys::WRITE)
        .arg(2)
        .arg(&redis.keys.meta)
        .arg(&redis.keys.topics)
        .arg(redis.ttl_ms)
        .arg(if full { "1" } else { "0" })
        .arg(connections)
        .arg(stream)
        .arg(sockets)
        .arg(&*redis.origin);
    if full {
        for (topic, n) in topics {
            eval.arg(&**topic).arg(*n);
        }
    } else {
        for (topic, n) in topics {
            if written.topics.get(topic) != Some(n) {
                eval.arg(&**topic).arg(*n);
            }
        }
        let current: HashMap<&str, u64> = topics.iter().map(|(t, n)| (&**t, *n)).collect();
        for topic in written.topics.keys() {
            if !current.contains_key(&**topic) {
                eval.arg(&**topic).arg(0);
            }
        }
    }
    let mut pipe = ::redis::pipe();
    pipe.add_command(eval)
        .cmd("ZADD")
        .arg(&redis.keys.registry)
        .arg(wall_ms())
        .arg(&redis.node)
        .ignore();
    if count {
        pipe.cmd("EVAL")
            .arg(keys::READ)
            .arg(1)
            .arg(&redis.keys.registry)
            .arg(&redis.keys.prefix)
            .arg("census");
    }
    let mut conn = redis.conn.clone();
    let reply = tokio::time::timeout(WRITE_TIMEOUT, pipe.query_async::<Vec<Value>>(&mut conn))
        .await
        .map_err(|_| "redis unreachable or slower than 500 ms".to_owned())?
        .map_err(|e| describe(&e))?;
    let (at, census) = match reply.as_slice() {
        [at] if !count => (at, None),
        [at, census] if count => (at, Some(census)),
        _ => return Err("unexpected reply from redis to a write".into()),
    };
    match at {
        Value::Int(-1) => return Ok(Outcome::Lost),
        Value::Array(written_by) => {
            let previous = match written_by.get(1) {
                Some(Value::BulkString(b)) => b.as_slice(),
                _ => &[],
            };
            if !full && !previous.is_empty() && previous != redis.origin.as_bytes() {
                if let Some(more) = redis.complaints.allow() {
                    tracing::error!(
                        node = %redis.node,
                        suppressed = more,
                        "another process writes figures as this node: give every node a unique --node"
                    );
                }
            }
        }
        _ => return Err("unexpected reply from redis to a write".into()),
    }
    let census = census
        .map(Census::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Outcome::Written(census))
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
