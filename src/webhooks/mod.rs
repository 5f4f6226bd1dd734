//! Occupancy webhooks (SPEC §10): `channel_occupied` / `channel_vacated`
//! when a topic's cluster-wide count leaves or reaches zero (the latter only
//! after the vacate delay), `member_added` / `member_removed` for a user's
//! first and last presence meta cluster-wide — each once for the whole
//! cluster, with a unique id, POSTed signed to `--webhook-url`.
//!
//! Two tasks per node. The watcher sees every topic (and presence KEY) whose
//! cluster-wide figure may have changed — here or, through the cluster
//! view, elsewhere — and turns arrivals and departures into decisions; every
//! node that sees a transition decides it, and the store (Redis, or memory
//! on a single node) lets exactly one of them through. The deliverer takes
//! this node's share of decided events and POSTs them in batches. While the
//! cluster view cannot be trusted (Redis down), nothing is decided: a topic
//! whose other nodes drop out of the view has not really emptied.

mod deliver;
mod store;
mod transitions;

pub use store::Store;

use crate::context::Ctx;
use crate::throttle::Throttle;
use std::sync::Arc;
use std::time::Duration;
use store::{Decision, Event, Name};
use tokio::time::Instant;
use transitions::Tracker;

/// How often the watcher looks at what changed.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// How often the deliverer asks for new events when it has none, and the
/// longest a batch waits to fill.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Most events in one POST.
const BATCH: usize = 100;
/// How often events of presumed-dead nodes are looked for: a sixth of the
/// takeover time, at most every 10 s (the default minute: every 10 s).
fn take_over_every(takeover_ms: u64) -> Duration {
    (Duration::from_millis(takeover_ms) / 6).clamp(LOOK_EVERY, Duration::from_secs(10))
}

/// Turns what this node sees into decisions, until the task is dropped.
pub async fn watch(ctx: Arc<Ctx>, store: Arc<Store>) {
    let delay = Duration::from_millis(ctx.config.webhook_vacate_delay_ms);
    let mut channels: Tracker<Arc<str>> = Tracker::new(delay);
    let mut members: Tracker<(Arc<str>, Arc<str>)> = Tracker::new(delay);
    let complaints = Throttle::new();
    let mut was_degraded = false;
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if ctx.cluster.degraded() {
            was_degraded = true;
            continue;
        }
        let now = Instant::now();
        let mut topics = ctx.registry.take_hooked();
        let mut keys = ctx.presence.take_hooked();
        if was_degraded {
            // Whatever changed while the view could not be trusted.
            was_degraded = false;
            topics.extend(channels.known());
            keys.extend(members.known());
        }
        let mut decisions = Vec::new();
        for topic in topics {
            let here = ctx.cluster.connections(&topic) > 0;
            if channels.observe(&topic, here, now) {
                decisions.push(Decision {
                    name: Name::ChannelOccupied,
                    channel: topic,
                    user: None,
                });
            }
        }
        for (topic, key) in keys {
            let here = ctx.presence.present(&topic, &key);
            let pair = (topic, key);
            if members.observe(&pair, here, now) {
                decisions.push(Decision {
                    name: Name::MemberAdded,
                    channel: pair.0,
                    user: Some(pair.1),
                });
            }
        }
        decisions.extend(channels.due(now).into_iter().map(|topic| Decision {
            name: Name::ChannelVacated,
            channel: topic,
            user: None,
        }));
        decisions.extend(members.due(now).into_iter().map(|(topic, key)| Decision {
            name: Name::MemberRemoved,
            channel: topic,
            user: Some(key),
        }));
        for d in decisions {
            if let Err(why) = store.decide(&d).await {
                if let Some(more) = complaints.allow() {
                    tracing::warn!(error = %why, suppressed = more, event = d.name.as_str(), channel = %d.channel, "webhook transition not recorded");
                }
            }
        }
    }
}

/// POSTs this node's share of events, until the task is dropped.
pub async fn deliver(ctx: Arc<Ctx>, store: Arc<Store>) {
    let Some(url) = ctx.config.webhook_url.clone() else {
        return;
    };
    let sender = match deliver::Sender::new(url, ctx.config.webhook_secret.clone()) {
        Ok(sender) => sender,
        Err(why) => {
            tracing::error!(error = %why, "webhooks disabled");
            return;
        }
    };
    let metrics = &ctx.metrics;
    let complaints = Throttle::new();
    let take_over_period = take_over_every(ctx.config.webhook_takeover_ms);
    let mut last_take_over: Option<Instant> = None;
    loop {
        let mut batch = Vec::new();
        if last_take_over.is_none_or(|t| t.elapsed() >= take_over_period) {
            last_take_over = Some(Instant::now());
            match store.take_over(BATCH).await {
                Ok(events) => batch = events,
                Err(why) => complain(&complaints, &why),
            }
        }
        if batch.is_empty() {
            match store.next(BATCH).await {
                Ok(events) => batch = events,
                Err(why) => complain(&complaints, &why),
            }
        }
        metrics
            .webhook_pending
            .set((batch.len() + store.queued()) as f64);
        if batch.is_empty() {
            tokio::time::sleep(POLL_EVERY).await;
            continue;
        }
        send(&sender, &store, &batch, metrics).await;
        metrics.webhook_pending.set(store.queued() as f64);
    }
}

fn complain(complaints: &Throttle, why: &str) {
    if let Some(more) = complaints.allow() {
        tracing::warn!(error = %why, suppressed = more, "webhook events not read");
    }
}

/// Delivers one batch: retried with backoff until it goes through or has
/// failed for five minutes.
async fn send(
    sender: &deliver::Sender,
    store: &Store,
    batch: &[Event],
    metrics: &crate::metrics::Metrics,
) {
    let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
    let first = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        match sender.post(batch).await {
            deliver::Outcome::Delivered => {
                deliver::count(metrics, "delivered");
                if let Err(why) = store.done(&ids).await {
                    tracing::warn!(error = %why, "delivered webhook events not acknowledged: they may be delivered again");
                }
                return;
            }
            deliver::Outcome::Failed(why) => {
                deliver::count(metrics, "failed");
                let pause = deliver::backoff(tries);
                if first.elapsed() + pause > deliver::GIVE_UP_AFTER {
                    deliver::count(metrics, "dropped");
                    tracing::error!(error = %why, events = batch.len(), tries, "webhook batch dropped after five minutes of failures");
                    let _ = store.done(&ids).await;
                    return;
                }
                tracing::debug!(error = %why, tries, "webhook batch failed; retrying");
                store.keep(&ids).await;
                // Events decided meanwhile wait behind this batch: the
                // gauge follows them through the pause.
                let until = Instant::now() + pause;
                loop {
                    metrics
                        .webhook_pending
                        .set((batch.len() + store.queued()) as f64);
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    tokio::time::sleep(left.min(POLL_EVERY)).await;
                }
            }
        }
    }
}
