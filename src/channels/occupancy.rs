//! Occupancy (SPEC §7): how many are on one topic across the cluster, live.
//! A member that joins with `occupancy: true` gets the figure at once, then
//! an `occupancy` push whenever the topic's cluster-wide count changes — at
//! most one per `--occupancy-interval-ms` per topic, the last one carrying
//! the final figure. One task per node does the pushing: the registry tells
//! it which watched topics changed (a join or leave here, or a change the
//! cluster view saw elsewhere), and each push is encoded once per
//! serializer and fanned out to the topic's watchers. Any channel answers
//! `get_occupancy`.

use super::Answer;
use crate::context::Ctx;
use crate::protocol::{reason, Payload};
use crate::registry::Select;
use crate::stats::{timestamp, to_json};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Most topics one `get_occupancy` may ask about.
pub const MAX_TOPICS: usize = 100;

#[derive(Serialize)]
struct Push<'a> {
    topic: &'a str,
    connections: u64,
    /// Distinct presence KEYs, on presence topics.
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<u64>,
    timestamp: String,
}

/// The `occupancy` push of `topic` now.
pub fn payload(ctx: &Ctx, topic: &str) -> String {
    render(topic, ctx.cluster.connections(topic), users(ctx, topic))
}

/// Distinct presence KEYs of `topic`, on presence topics.
fn users(ctx: &Ctx, topic: &str) -> Option<u64> {
    ctx.presence
        .covers(topic)
        .then(|| ctx.presence.counts(topic).1)
}

fn render(topic: &str, connections: u64, users: Option<u64>) -> String {
    to_json(&Push {
        topic,
        connections,
        users,
        timestamp: timestamp(),
    })
}

/// The topics of a `get_occupancy` request: 1..=100 strings, duplicates
/// asked once.
pub fn topics(value: Option<&Value>) -> Option<Vec<String>> {
    let list = value?.as_array()?;
    if list.is_empty() || list.len() > MAX_TOPICS {
        return None;
    }
    let mut topics: Vec<String> = Vec::with_capacity(list.len());
    for t in list {
        let t = t.as_str()?;
        if !topics.iter().any(|seen| seen == t) {
            topics.push(t.to_owned());
        }
    }
    Some(topics)
}

/// `get_occupancy` `{"topics": [...]}`.
pub fn query(ctx: &Ctx, payload: &Payload) -> Answer {
    let params = payload
        .json()
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
    match topics(params.as_ref().and_then(|p| p.get("topics"))) {
        Some(topics) => Answer::ok(ctx.cluster.occupancy(&topics)),
        None => Answer::error(reason("bad topics")),
    }
}

/// What was last pushed for a topic.
struct Pushed {
    at: Instant,
    connections: u64,
    users: Option<u64>,
}

/// Pushes changed figures to watchers until the task is dropped.
pub async fn run(ctx: Arc<Ctx>) {
    let interval = Duration::from_millis(ctx.config.occupancy_interval_ms);
    let mut pushed: HashMap<Arc<str>, Pushed> = HashMap::new();
    // Topics with a change not pushed yet, and when they may be.
    let mut due: HashMap<Arc<str>, Instant> = HashMap::new();
    let mut degraded = ctx.cluster.degraded();
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(250)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            _ = ctx.registry.watched_changed() => {}
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
            _ = tick.tick() => {
                // Going degraded or back changes every figure (the other
                // nodes' counts drop out or come back).
                let now_degraded = ctx.cluster.degraded();
                if now_degraded != degraded {
                    degraded = now_degraded;
                    for t in ctx.registry.watched_topics() {
                        ctx.registry.touch(&t);
                    }
                }
                let now = Instant::now();
                pushed.retain(|t, p| now.duration_since(p.at) < interval || due.contains_key(t));
            }
        }
        let now = Instant::now();
        for topic in ctx.registry.take_watched() {
            let allowed = pushed
                .get(&topic)
                .map_or(now, |p| (p.at + interval).max(now));
            due.entry(topic).or_insert(allowed);
        }
        let ready: Vec<Arc<str>> = due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in ready {
            due.remove(&topic);
            let connections = ctx.cluster.connections(&topic);
            // users can change while connections does not (a second
            // tab leaves as a new user joins): either is news.
            let users = users(&ctx, &topic);
            if pushed
                .get(&topic)
                .is_some_and(|p| p.connections == connections && p.users == users)
            {
                continue;
            }
            let body = render(&topic, connections, users);
            ctx.registry
                .publish(&topic, "occupancy", &body, Select::Occupancy);
            pushed.insert(
                topic,
                Pushed {
                    at: now,
                    connections,
                    users,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topics;
    use serde_json::json;

    #[test]
    fn a_query_names_one_to_a_hundred_topics() {
        assert_eq!(
            topics(Some(&json!(["a", "b", "a"]))),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(topics(Some(&json!([]))), None);
        assert_eq!(topics(Some(&json!(["a", 1]))), None);
        assert_eq!(topics(Some(&json!("a"))), None);
        assert_eq!(topics(None), None);
        let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        assert_eq!(topics(Some(&json!(many))), None);
        assert_eq!(
            topics(Some(&json!(many[..100]))).map(|t| t.len()),
            Some(100)
        );
    }
}
