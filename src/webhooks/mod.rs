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
//!
//! In a cluster, views differ and nodes die, so the watcher also:
//! - sends each departure with how long it has seen the thing gone: Redis
//!   refuses it when the thing was recorded again since (this node saw it
//!   go later than the others, and its delay ran out after a comeback it
//!   has not seen yet); the refused node's tracker just goes on;
//! - reconciles, every vacate delay (1–10 s) and when Redis comes back:
//!   it scans what Redis holds as occupied or present (a batch per look,
//!   so at most `SCAN_BATCH` fields per 50 ms), and takes up as leaving
//!   whatever has been recorded for a second, is absent from its view and
//!   unknown to its tracker — a thing whose only node died before anyone
//!   else saw it — so that it is vacated after the delay;
//! - checks Redis's epoch marker then (and whenever a decision is refused
//!   for naming an old one): a Redis that lost the state gets, silently,
//!   what this node believed it held, before this node decides anything
//!   more;
//! - keeps a decision whose Redis call failed, in order, and tries it again
//!   (decisions are idempotent): for as long as Redis is down, and up to
//!   `MAX_TRIES` times, backing off, while it answers with errors.
//!
//! On a single node none of this applies: the memory store cannot fail,
//! and this node's view is the whole truth.

mod deliver;
mod store;
mod transitions;

pub use store::Store;

use crate::context::Ctx;
use crate::throttle::Throttle;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use store::{Decision, Event, Held, Name, Outcome};
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

/// How often a node reconciles with what Redis holds: every vacate delay,
/// within 1–10 s.
fn reconcile_every(delay: Duration) -> Duration {
    delay.clamp(Duration::from_secs(1), Duration::from_secs(10))
}
/// Only what Redis recorded at least this long ago is taken up by a
/// reconciliation: anything newer may not have reached this node's view.
const SETTLED: Duration = Duration::from_secs(1);
/// Fields a reconciliation looks at per look.
const SCAN_BATCH: usize = 500;
/// Decisions waiting for Redis at most (the oldest are dropped past it).
const QUEUE_MAX: usize = 100_000;
/// Delivered events whose acknowledgement is retried, at most.
const UNACKED_MAX: usize = 10 * BATCH;
/// Failed tries, while Redis answers, before a decision is dropped.
const MAX_TRIES: u32 = 10;

/// The pause before the next try of a decision that failed `tries` times:
/// 100 ms, doubling, at most 5 s.
fn retry_after(tries: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(tries.saturating_sub(1)))
        .min(Duration::from_secs(5))
}

/// Turns what this node sees into decisions, until the task is dropped.
pub async fn watch(ctx: Arc<Ctx>, store: Arc<Store>) {
    let mut w = Watcher::new(ctx, store);
    let mut was_degraded = false;
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if w.ctx.cluster.degraded() {
            was_degraded = true;
            continue;
        }
        w.look(std::mem::take(&mut was_degraded)).await;
    }
}

/// A decision not yet taken by the store.
struct Pending {
    d: Decision,
    /// Failed tries so far.
    tries: u32,
    /// Not tried again before.
    not_before: Option<Instant>,
}

struct Watcher {
    ctx: Arc<Ctx>,
    store: Arc<Store>,
    channels: Tracker<Arc<str>>,
    members: Tracker<(Arc<str>, Arc<str>)>,
    /// Decisions in the order this node made them.
    queue: VecDeque<Pending>,
    complaints: Throttle,
    reconcile_every: Duration,
    /// When the last reconciliation started.
    last_pass: Option<Instant>,
    /// The scan cursor of the reconciliation under way.
    pass: Option<String>,
}

impl Watcher {
    fn new(ctx: Arc<Ctx>, store: Arc<Store>) -> Watcher {
        let delay = Duration::from_millis(ctx.config.webhook_vacate_delay_ms);
        Watcher {
            ctx,
            store,
            channels: Tracker::new(delay),
            members: Tracker::new(delay),
            queue: VecDeque::new(),
            complaints: Throttle::new(),
            reconcile_every: reconcile_every(delay),
            last_pass: None,
            pass: None,
        }
    }

    /// One look, the cluster view being trusted; `back`: for the first
    /// time since it was not.
    async fn look(&mut self, back: bool) {
        let now = Instant::now();
        if self.store.shared()
            && (back
                || self
                    .last_pass
                    .is_none_or(|t| now - t >= self.reconcile_every))
        {
            // The epoch first: after Redis lost the state, what this node
            // believed it held is restored before anything seen now is
            // decided.
            self.last_pass = Some(now);
            self.pass = match self.resync().await {
                Ok(()) => Some("0".into()),
                Err(why) => {
                    self.complain("webhook state not checked", &why);
                    None
                }
            };
        }
        let mut topics = self.ctx.registry.take_hooked();
        let mut keys = self.ctx.presence.take_hooked();
        if back {
            // Whatever changed while the view could not be trusted.
            topics.extend(self.channels.known());
            keys.extend(self.members.known());
        }
        for topic in topics {
            let here = self.ctx.cluster.connections(&topic) > 0;
            if self.channels.observe(&topic, here, now) {
                self.push(Decision {
                    name: Name::ChannelOccupied,
                    channel: topic,
                    user: None,
                    gone_since: None,
                });
            }
        }
        for (topic, key) in keys {
            let here = self.ctx.presence.present(&topic, &key);
            let pair = (topic, key);
            if self.members.observe(&pair, here, now) {
                self.push(Decision {
                    name: Name::MemberAdded,
                    channel: pair.0,
                    user: Some(pair.1),
                    gone_since: None,
                });
            }
        }
        for (topic, since) in self.channels.due(now) {
            self.push(Decision {
                name: Name::ChannelVacated,
                channel: topic,
                user: None,
                gone_since: Some(since),
            });
        }
        for ((topic, key), since) in self.members.due(now) {
            self.push(Decision {
                name: Name::MemberRemoved,
                channel: topic,
                user: Some(key),
                gone_since: Some(since),
            });
        }
        self.reconcile().await;
        self.flush().await;
    }

    fn push(&mut self, d: Decision) {
        if self.queue.len() >= QUEUE_MAX {
            if let Some(p) = self.queue.pop_front() {
                let why = format!("{} of {}", p.d.name.as_str(), p.d.channel);
                self.complain(
                    "webhook transition dropped: too many waiting for redis",
                    &why,
                );
            }
        }
        self.queue.push_back(Pending {
            d,
            tries: 0,
            not_before: None,
        });
    }

    /// Hands the queued decisions to the store, in order, until one fails.
    async fn flush(&mut self) {
        let mut resynced = false;
        loop {
            let Some(p) = self.queue.front() else {
                return;
            };
            if p.not_before.is_some_and(|t| t > Instant::now()) {
                return;
            }
            let d = p.d.clone();
            let failed = match self.store.decide(&d).await {
                Ok(Outcome::NewEpoch) if !resynced => {
                    resynced = true;
                    match self.resync().await {
                        Ok(()) => continue,
                        Err(why) => why,
                    }
                }
                Ok(Outcome::NewEpoch) => "the webhook epoch keeps changing".to_owned(),
                Ok(outcome) => {
                    if outcome == Outcome::Stale {
                        tracing::debug!(event = d.name.as_str(), channel = %d.channel, "webhook departure refused: back elsewhere since this node saw it go");
                    }
                    self.queue.pop_front();
                    continue;
                }
                Err(why) => why,
            };
            let Some(p) = self.queue.front_mut() else {
                return;
            };
            p.tries += 1;
            if p.tries >= MAX_TRIES {
                self.queue.pop_front();
                tracing::warn!(error = %failed, tries = MAX_TRIES, event = d.name.as_str(), channel = %d.channel, "webhook transition dropped");
            } else {
                p.not_before = Some(Instant::now() + retry_after(p.tries));
                self.complain("webhook transition not recorded yet; will retry", &failed);
            }
            return;
        }
    }

    /// Checks Redis's epoch marker; when it is not the one this node last
    /// restored under (Redis lost the state, or this node just started),
    /// restores what this node believes Redis holds.
    async fn resync(&mut self) -> Result<(), String> {
        for _ in 0..3 {
            let Some(epoch) = self.store.new_epoch().await? else {
                return Ok(());
            };
            let held = held(&self.queue, &self.channels, &self.members);
            if self.store.restore(&epoch, &held).await? {
                if !held.is_empty() {
                    tracing::warn!(
                        restored = held.len(),
                        "redis lost the webhook state (a new epoch); restored what this node knew"
                    );
                }
                return Ok(());
            }
        }
        Err("the webhook epoch keeps changing".into())
    }

    /// One step of the reconciliation under way: what Redis has held for
    /// a while that this node neither sees nor tracks is taken up as
    /// leaving.
    async fn reconcile(&mut self) {
        let Some(cursor) = self.pass.take() else {
            return;
        };
        let (next, fields) = match self.store.scan_old(&cursor, SCAN_BATCH, SETTLED).await {
            Ok(page) => page,
            Err(why) => {
                // This pass is over; the next one comes on time.
                self.complain("webhook state not reconciled", &why);
                return;
            }
        };
        if self.ctx.cluster.degraded() {
            // The view cannot tell what is absent now.
            return;
        }
        let now = Instant::now();
        let mut taken = 0;
        for field in fields {
            match store::parse_field(&field) {
                Some(Held::Channel(topic))
                    if !self.channels.knows(&topic)
                        && self.ctx.cluster.connections(&topic) == 0 =>
                {
                    self.channels.adopt_gone(topic, now);
                    taken += 1;
                }
                Some(Held::Member(topic, key))
                    if !self.ctx.presence.present(&topic, &key)
                        && !self.members.knows(&(topic.clone(), key.clone())) =>
                {
                    self.members.adopt_gone((topic, key), now);
                    taken += 1;
                }
                _ => {}
            }
        }
        if taken > 0 {
            tracing::info!(
                taken,
                "channels or members recorded as occupied that no node here sees: vacated after the delay unless they show up"
            );
        }
        self.pass = (next != "0").then_some(next);
    }

    fn complain(&self, what: &str, why: &str) {
        if let Some(more) = self.complaints.allow() {
            tracing::warn!(error = %why, suppressed = more, "{what}");
        }
    }
}

/// What a node believes Redis holds, each field with whether the thing is
/// here (rather than leaving): what its trackers know, as of before the
/// decisions still queued.
fn held(
    queue: &VecDeque<Pending>,
    channels: &Tracker<Arc<str>>,
    members: &Tracker<(Arc<str>, Arc<str>)>,
) -> Vec<(String, bool)> {
    let mut queued = HashSet::new();
    let mut held = Vec::new();
    for p in queue {
        let field = p.d.field();
        // The first queued decision of a thing tells what Redis held
        // before it: nothing before an arrival, the thing before a
        // departure.
        if !queued.contains(&field) {
            if !p.d.starts() {
                held.push((field.clone(), false));
            }
            queued.insert(field);
        }
    }
    for (topic, since) in channels.states() {
        let field = store::channel_field(topic);
        if !queued.contains(&field) {
            held.push((field, since.is_none()));
        }
    }
    for ((topic, key), since) in members.states() {
        let field = store::member_field(topic, key);
        if !queued.contains(&field) {
            held.push((field, since.is_none()));
        }
    }
    held
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
    // Whether events may be pending under this node's name unread: a read
    // that failed here may have run in Redis all the same (it timed out
    // while Redis was stalled), its reply lost with the events it took.
    let mut lost_reads = false;
    // Delivered events whose acknowledgement failed: acknowledged again
    // before they could be read back as unacknowledged and sent twice.
    let mut unacked: Vec<String> = Vec::new();
    loop {
        let mut batch = Vec::new();
        if !unacked.is_empty() && store.done(&unacked).await.is_ok() {
            unacked.clear();
        }
        if lost_reads && unacked.is_empty() {
            match store.unacknowledged(BATCH).await {
                Ok((events, more)) => {
                    lost_reads = more;
                    batch = events;
                }
                Err(why) => complain(&complaints, &why),
            }
        }
        if batch.is_empty() && last_take_over.is_none_or(|t| t.elapsed() >= take_over_period) {
            last_take_over = Some(Instant::now());
            match store.take_over(BATCH).await {
                Ok(events) => batch = events,
                Err(why) => {
                    lost_reads = true;
                    complain(&complaints, &why);
                }
            }
        }
        if batch.is_empty() {
            match store.next(BATCH).await {
                Ok(events) => batch = events,
                Err(why) => {
                    lost_reads = true;
                    complain(&complaints, &why);
                }
            }
        }
        metrics
            .webhook_pending
            .set((batch.len() + store.queued()) as f64);
        if batch.is_empty() {
            tokio::time::sleep(POLL_EVERY).await;
            continue;
        }
        if let Err(ids) = send(&sender, &store, &batch, metrics).await {
            unacked.extend(ids);
            // Bounded: past it, the oldest may be delivered again (same
            // ids, which a receiver drops).
            let over = unacked.len().saturating_sub(UNACKED_MAX);
            unacked.drain(..over);
        }
        metrics.webhook_pending.set(store.queued() as f64);
    }
}

fn complain(complaints: &Throttle, why: &str) {
    if let Some(more) = complaints.allow() {
        tracing::warn!(error = %why, suppressed = more, "webhook events not read");
    }
}

/// Delivers one batch: retried with backoff until it goes through or has
/// failed for five minutes; then acknowledged. `Err`: the ids whose
/// acknowledgement failed.
async fn send(
    sender: &deliver::Sender,
    store: &Store,
    batch: &[Event],
    metrics: &crate::metrics::Metrics,
) -> Result<(), Vec<String>> {
    let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
    let first = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        match sender.post(batch).await {
            deliver::Outcome::Delivered => {
                deliver::count(metrics, "delivered");
                if let Err(why) = store.done(&ids).await {
                    tracing::warn!(error = %why, "delivered webhook events not acknowledged yet; will retry");
                    return Err(ids);
                }
                return Ok(());
            }
            deliver::Outcome::Failed(why) => {
                deliver::count(metrics, "failed");
                let pause = deliver::backoff(tries);
                if first.elapsed() + pause > deliver::GIVE_UP_AFTER {
                    deliver::count(metrics, "dropped");
                    tracing::error!(error = %why, events = batch.len(), tries, "webhook batch dropped after five minutes of failures");
                    return store.done(&ids).await.map_err(|_| ids);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(name: Name, channel: &str, user: Option<&str>) -> Pending {
        Pending {
            d: Decision {
                name,
                channel: Arc::from(channel),
                user: user.map(Arc::from),
                gone_since: matches!(name, Name::ChannelVacated | Name::MemberRemoved)
                    .then(Instant::now),
            },
            tries: 0,
            not_before: None,
        }
    }

    #[test]
    fn what_is_restored_is_what_redis_held_before_the_queued_decisions() {
        let delay = Duration::from_secs(3);
        let t0 = Instant::now();
        let mut channels: Tracker<Arc<str>> = Tracker::new(delay);
        let mut members: Tracker<(Arc<str>, Arc<str>)> = Tracker::new(delay);
        let a: Arc<str> = Arc::from("a");
        for t in ["a", "b", "c", "d"] {
            channels.observe(&Arc::from(t), true, t0);
        }
        channels.observe(&Arc::from("b"), false, t0);
        members.observe(&(a.clone(), Arc::from("u")), true, t0);
        // "c" arrived, its decision not taken yet; "e" left (the tracker
        // forgot it), its decision not taken yet, then came back.
        let queue: VecDeque<Pending> = [
            pending(Name::ChannelOccupied, "c", None),
            pending(Name::ChannelVacated, "e", None),
            pending(Name::ChannelOccupied, "e", None),
        ]
        .into();
        channels.observe(&Arc::from("e"), true, t0);
        let mut got = held(&queue, &channels, &members);
        got.sort();
        assert_eq!(
            got,
            [
                ("c\na".to_owned(), true),
                ("c\nb".to_owned(), false),
                ("c\nd".to_owned(), true),
                ("c\ne".to_owned(), false),
                ("m\na\nu".to_owned(), true),
            ]
        );
    }

    #[test]
    fn a_failed_decision_is_tried_again_sooner_then_later() {
        assert_eq!(retry_after(1), Duration::from_millis(100));
        assert_eq!(retry_after(2), Duration::from_millis(200));
        assert_eq!(retry_after(6), Duration::from_millis(3200));
        assert_eq!(retry_after(7), Duration::from_secs(5));
        assert_eq!(retry_after(40), Duration::from_secs(5));
    }
}
