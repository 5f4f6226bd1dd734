//! The pub/sub relay. Deliveries published on this node are queued (bounded)
//! and PUBLISHed in batches on `<prefix>:relay`, tagged with this process's
//! origin id; every node delivers what it receives there to its own
//! subscribers, except its own messages, which it delivered before sending.
//! So each subscriber on each node gets each message exactly once.
//!
//! `<prefix>:events` takes events from any Redis client, in the shape of
//! `POST /api/events`; each node validates and delivers them locally. Bad
//! input there is logged and counted, never fatal.

use super::redis::{describe, RedisBackend};
use crate::bus::{Delivery, Event, RelayReceiver, MAX_BATCH, MAX_BODY};
use crate::throttle::Throttle;
use ::redis::{PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Most messages in one pipelined batch.
const BATCH: usize = 256;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(250);

/// A unique id for this process's relay messages.
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

#[derive(Serialize)]
struct Outgoing<'a> {
    origin: &'a str,
    deliveries: &'a [Delivery],
}

#[derive(Deserialize)]
struct Incoming {
    origin: String,
    deliveries: Vec<Delivery>,
}

/// PUBLISHes what the bus queued, in pipelined batches, each message tagged
/// with this process's origin; runs until the task is dropped.
pub async fn publish(redis: Arc<RedisBackend>, mut rx: RelayReceiver) {
    let complaints = Throttle::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let mut pipe = ::redis::pipe();
        for deliveries in &batch {
            let message = Outgoing {
                origin: &redis.origin,
                deliveries,
            };
            pipe.cmd("PUBLISH")
                .arg(&redis.keys.relay)
                .arg(crate::stats::to_json(&message))
                .ignore();
        }
        let mut conn = redis.conn.clone();
        let sent = tokio::time::timeout(PUBLISH_TIMEOUT, pipe.exec_async(&mut conn)).await;
        let n = batch.len() as u64;
        let failure = match sent {
            Ok(Ok(())) => {
                redis.metrics.relay_out.increment(n);
                continue;
            }
            Ok(Err(e)) => describe(&e),
            Err(_) => "redis did not answer within 1 s".to_owned(),
        };
        redis.metrics.relay_dropped.increment(n);
        if let Some(more) = complaints.allow() {
            tracing::warn!(error = %failure, dropped = n, suppressed = more, "could not relay messages to other nodes");
        }
    }
}

/// Subscribes to the relay and events channels (once: the connection
/// manager resubscribes after every reconnect) and delivers what arrives.
pub async fn subscribe(redis: Arc<RedisBackend>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    let channels = [redis.keys.relay.clone(), redis.keys.events.clone()];
    let mut logged = false;
    loop {
        let mut sub = redis.sub.clone();
        let attempt = tokio::time::timeout(SUBSCRIBE_TIMEOUT, sub.subscribe(&channels)).await;
        match attempt {
            Ok(Ok(())) => break,
            Ok(Err(e)) if !logged => {
                tracing::warn!(error = %describe(&e), "cannot subscribe yet; retrying");
                logged = true;
            }
            _ => {}
        }
        tokio::time::sleep(SUBSCRIBE_RETRY).await;
    }
    tracing::debug!(channels = ?channels, "subscribed");
    let complaints = Throttle::new();
    loop {
        let Some(push) = pushes.recv().await else {
            return;
        };
        receive(&redis, push, &complaints);
    }
}

fn receive(redis: &RedisBackend, push: PushInfo, complaints: &Throttle) {
    if push.kind != PushKind::Message {
        return;
    }
    let [Value::BulkString(channel), Value::BulkString(body)] = push.data.as_slice() else {
        return;
    };
    let outcome = if channel.as_slice() == redis.keys.relay.as_bytes() {
        from_node(redis, body)
    } else if channel.as_slice() == redis.keys.events.as_bytes() {
        from_producer(redis, body)
    } else {
        return;
    };
    if let Err(why) = outcome {
        redis.metrics.relay_rejected.increment(1);
        if let Some(more) = complaints.allow() {
            let channel = String::from_utf8_lossy(channel);
            tracing::warn!(%channel, error = %why, suppressed = more, "rejected a message from redis");
        }
    }
}

/// A message from another node (or this one's echo, which is skipped).
fn from_node(redis: &RedisBackend, body: &[u8]) -> Result<(), String> {
    let message: Incoming =
        serde_json::from_slice(body).map_err(|e| format!("invalid relay message: {e}"))?;
    if message.origin == *redis.origin {
        return Ok(());
    }
    // Payloads are spliced into frames as JSON text: never pass on
    // anything that is not JSON, whoever published it.
    for d in &message.deliveries {
        serde_json::from_str::<serde::de::IgnoredAny>(&d.payload)
            .map_err(|e| format!("relay payload for {:?} is not JSON: {e}", d.topic))?;
    }
    redis.metrics.relay_in.increment(1);
    redis.bus.deliver_local(&message.deliveries);
    Ok(())
}

/// Events PUBLISHed on `<prefix>:events`, validated like `POST /api/events`.
fn from_producer(redis: &RedisBackend, body: &[u8]) -> Result<(), String> {
    if body.len() > MAX_BODY {
        redis.metrics.events_rejected.increment(1);
        return Err(format!(
            "event message of {} bytes (at most {MAX_BODY})",
            body.len()
        ));
    }
    let parsed = serde_json::from_slice(body)
        .map_err(|e| format!("invalid JSON: {e}"))
        .and_then(|v| Event::batch_from_json(v, MAX_BATCH).map_err(|e| e.0));
    let events = match parsed {
        Ok(events) => events,
        Err(why) => {
            redis.metrics.events_rejected.increment(1);
            return Err(why);
        }
    };
    redis.metrics.relay_in.increment(1);
    redis.metrics.events_in.increment(events.len() as u64);
    let deliveries: Vec<Delivery> = events
        .iter()
        .flat_map(|e| e.deliveries().iter().cloned())
        .collect();
    redis.bus.deliver_local(&deliveries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_differ_within_one_process() {
        assert_ne!(origin_id("a"), origin_id("a"));
    }
}
