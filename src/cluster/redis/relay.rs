//! The pub/sub relay. Deliveries published on this node are queued (bounded)
//! and PUBLISHed in batches on `<prefix>:relay`, tagged with this process's
//! origin id; every node delivers what it receives there to its own
//! subscribers, except its own messages, which it delivered before sending.
//! So each subscriber on each node gets each message exactly once.
//!
//! `<prefix>:events` takes events from any Redis client, in the shape of
//! `POST /api/events`; each node validates and delivers them locally. Bad
//! input there is logged and counted, never fatal.

use super::{describe, RedisBackend};
use crate::bus::{Delivery, Event, RelayReceiver, MAX_BATCH, MAX_BODY};
use crate::throttle::Throttle;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Most messages in one pipelined batch.
const BATCH: usize = 256;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest relay message taken from Redis. One message is what one publish
/// on a node produced: at most `MAX_BATCH` events of a body of at most
/// `MAX_BODY`, each shaped into up to two deliveries (defaults filled in),
/// so a few times the body limit.
const MAX_RELAY_MESSAGE: usize = 4 * MAX_BODY;

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
            pipe.add_command(redis.publish(&redis.keys.relay, crate::stats::to_json(&message)))
                .ignore();
        }
        let mut conn = redis.conn.clone();
        let n = batch.len() as u64;
        redis.metrics.redis_commands.increment(n);
        let sent = tokio::time::timeout(PUBLISH_TIMEOUT, pipe.exec_async(&mut conn)).await;
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

/// A message from another node (or this one's echo, which is skipped),
/// bounded like HTTP input: anyone who can write to Redis can publish here.
pub fn from_node(redis: &RedisBackend, body: &[u8]) -> Result<(), String> {
    if body.len() > MAX_RELAY_MESSAGE {
        return Err(format!(
            "relay message of {} bytes (at most {MAX_RELAY_MESSAGE})",
            body.len()
        ));
    }
    let message: Incoming =
        serde_json::from_slice(body).map_err(|e| format!("invalid relay message: {e}"))?;
    if message.origin == *redis.origin {
        return Ok(());
    }
    if message.deliveries.len() > 2 * MAX_BATCH {
        return Err(format!(
            "relay message of {} deliveries (at most {})",
            message.deliveries.len(),
            2 * MAX_BATCH
        ));
    }
    // Payloads are spliced into frames as JSON text: never pass on
    // anything that is not JSON, whoever published it; nor an event the
    // protocol gives a meaning to (no node relays one).
    for d in &message.deliveries {
        if crate::bus::reserved(&d.event) {
            return Err(format!("relay delivery of reserved event {:?}", d.event));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&d.payload)
            .map_err(|e| format!("relay payload for {:?} is not JSON: {e}", d.topic))?;
    }
    redis.metrics.relay_in.increment(1);
    redis.bus.deliver_local(&message.deliveries);
    Ok(())
}

/// Events PUBLISHed on `<prefix>:events`, validated like `POST /api/events`.
pub fn from_producer(redis: &RedisBackend, body: &[u8]) -> Result<(), String> {
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
