//! The pub/sub relay. Deliveries published on this node are queued (bounded)
//! and PUBLISHed in batches on `<prefix>:relay`, tagged with this process's
//! origin id; every node delivers what it receives there to its own
//! subscribers, except its own messages, which it delivered before sending.
//! So each subscriber on each node gets each message exactly once.
//!
//! `<prefix>:events` takes events from any Redis client, in the shape of
//! `POST /api/events`; each node validates and delivers them locally. Bad
//! input there is logged and counted, never fatal.

use super::redis::{describe, RedisCluster};
use super::Throttle;
use crate::bus::{Delivery, Event, Relay};
use crate::context::Ctx;
use crate::http::{MAX_BATCH, MAX_BODY};
use crate::metrics::Metrics;
use ::redis::{PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Messages waiting to be published; beyond this they are dropped (and
/// counted) rather than held in memory while Redis is away.
pub const QUEUE: usize = 4096;
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

/// The bus's way out to the other nodes.
pub struct RedisRelay {
    origin: Arc<str>,
    tx: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
    complaints: Throttle,
}

impl RedisRelay {
    pub fn new(origin: Arc<str>, metrics: Arc<Metrics>) -> (RedisRelay, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let relay = RedisRelay {
            origin,
            tx,
            metrics,
            complaints: Throttle::new(),
        };
        (relay, rx)
    }
}

impl Relay for RedisRelay {
    fn send(&self, deliveries: &[Delivery]) {
        let message = Outgoing {
            origin: &self.origin,
            deliveries,
        };
        let Ok(text) = serde_json::to_string(&message) else {
            return;
        };
        match self.tx.try_send(text) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.relay_dropped.increment(1);
                if let Some(more) = self.complaints.allow() {
                    tracing::warn!(
                        suppressed = more,
                        "relay queue full (redis slow or down): message not sent to other nodes"
                    );
                }
            }
            // Shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// PUBLISHes queued messages in pipelined batches until shutdown.
pub async fn publish(ctx: Arc<Ctx>, redis: &RedisCluster) {
    let taken = redis
        .outgoing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(mut rx) = taken else {
        return;
    };
    let shutdown = ctx.shutdown_signal();
    tokio::pin!(shutdown);
    let complaints = Throttle::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        tokio::select! {
            _ = &mut shutdown => return,
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
        }
        let mut pipe = ::redis::pipe();
        for message in &batch {
            pipe.cmd("PUBLISH")
                .arg(&redis.keys.relay)
                .arg(message)
                .ignore();
        }
        let mut conn = redis.conn.clone();
        let sent = tokio::select! {
            _ = &mut shutdown => return,
            r = tokio::time::timeout(PUBLISH_TIMEOUT, pipe.exec_async(&mut conn)) => r,
        };
        let n = batch.len() as u64;
        let failure = match sent {
            Ok(Ok(())) => {
                ctx.metrics.relay_out.increment(n);
                continue;
            }
            Ok(Err(e)) => describe(&e),
            Err(_) => "redis did not answer within 1 s".to_owned(),
        };
        ctx.metrics.relay_dropped.increment(n);
        if let Some(more) = complaints.allow() {
            tracing::warn!(error = %failure, dropped = n, suppressed = more, "could not relay messages to other nodes");
        }
    }
}

/// Subscribes to the relay and events channels (once: the connection
/// manager resubscribes after every reconnect) and delivers what arrives.
pub async fn subscribe(ctx: Arc<Ctx>, redis: &RedisCluster) {
    let taken = redis
        .pushes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(mut pushes) = taken else {
        return;
    };
    let shutdown = ctx.shutdown_signal();
    tokio::pin!(shutdown);
    let channels = [redis.keys.relay.clone(), redis.keys.events.clone()];
    let mut logged = false;
    loop {
        let mut sub = redis.sub.clone();
        let attempt = tokio::select! {
            _ = &mut shutdown => return,
            r = tokio::time::timeout(SUBSCRIBE_TIMEOUT, sub.subscribe(&channels)) => r,
        };
        match attempt {
            Ok(Ok(())) => break,
            Ok(Err(e)) if !logged => {
                tracing::warn!(error = %describe(&e), "cannot subscribe yet; retrying");
                logged = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(SUBSCRIBE_RETRY) => {}
        }
    }
    tracing::debug!(channels = ?channels, "subscribed");
    let complaints = Throttle::new();
    loop {
        let push = tokio::select! {
            _ = &mut shutdown => return,
            p = pushes.recv() => match p { Some(p) => p, None => return },
        };
        receive(&ctx, redis, push, &complaints);
    }
}

fn receive(ctx: &Ctx, redis: &RedisCluster, push: PushInfo, complaints: &Throttle) {
    if push.kind != PushKind::Message {
        return;
    }
    let [Value::BulkString(channel), Value::BulkString(body)] = push.data.as_slice() else {
        return;
    };
    let outcome = if channel.as_slice() == redis.keys.relay.as_bytes() {
        from_node(ctx, redis, body)
    } else if channel.as_slice() == redis.keys.events.as_bytes() {
        from_producer(ctx, body)
    } else {
        return;
    };
    if let Err(why) = outcome {
        ctx.metrics.relay_rejected.increment(1);
        if let Some(more) = complaints.allow() {
            let channel = String::from_utf8_lossy(channel);
            tracing::warn!(%channel, error = %why, suppressed = more, "rejected a message from redis");
        }
    }
}

/// A message from another node (or this one's echo, which is skipped).
fn from_node(ctx: &Ctx, redis: &RedisCluster, body: &[u8]) -> Result<(), String> {
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
    ctx.metrics.relay_in.increment(1);
    ctx.bus.deliver_local(&message.deliveries);
    Ok(())
}

/// Events PUBLISHed on `<prefix>:events`, validated like `POST /api/events`.
fn from_producer(ctx: &Ctx, body: &[u8]) -> Result<(), String> {
    if body.len() > MAX_BODY {
        ctx.metrics.events_rejected.increment(1);
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
            ctx.metrics.events_rejected.increment(1);
            return Err(why);
        }
    };
    ctx.metrics.relay_in.increment(1);
    ctx.metrics.events_in.increment(events.len() as u64);
    let deliveries: Vec<Delivery> = events
        .iter()
        .flat_map(|e| e.deliveries().iter().cloned())
        .collect();
    ctx.bus.deliver_local(&deliveries);
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
