//! Presence on the wire (SPEC §9): `presence_state` for a joiner,
//! `presence_diff` for every member at most every 100 ms per topic, the
//! count-only mode of crowded topics, and `get_presence_stats`. The state
//! itself is the presence component's; this is what members are sent.

use super::occupancy::Figures;
use super::Answer;
use crate::context::Ctx;
use crate::presence::Flush;
use crate::protocol::{reason, Payload};
use crate::registry::Select;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// At most one `presence_diff` per topic per this long, on each node.
pub const DIFF_EVERY: Duration = Duration::from_millis(100);
/// How often the task looks whether the other nodes' metas may be shown
/// (the cluster view holds) even when nothing changed.
const CHECK_EVERY: Duration = Duration::from_millis(250);

#[derive(Serialize)]
pub struct Counts {
    pub connections: u64,
    pub users: u64,
}

/// What the joiner of a presence topic gets after its `ok`: the whole
/// state, or `{}` when the topic is count-only (its counts follow as an
/// `occupancy` push).
pub fn after_join(ctx: &Ctx, topic: &str) -> Vec<(&'static str, String)> {
    vec![("presence_state", ctx.presence.state(topic))]
}

/// `get_presence_stats` `{"topic": T}` on any channel.
pub fn query(ctx: &Ctx, payload: &Payload) -> Answer {
    let topic = payload
        .json()
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .and_then(|v| v.get("topic").and_then(Value::as_str).map(str::to_owned));
    match topic {
        None => Answer::error(reason("bad topic")),
        Some(t) if !ctx.presence.covers(&t) => Answer::error(reason("not a presence topic")),
        Some(t) => Answer::ok(crate::stats::to_json(&counts(ctx, &t))),
    }
}

/// `connections` and `users` of a presence topic as members see them.
pub fn counts(ctx: &Ctx, topic: &str) -> Counts {
    let (connections, users) = ctx.presence.counts(topic);
    Counts { connections, users }
}

/// Sends what the presence component has for members, until the task is
/// dropped.
pub async fn run(ctx: Arc<Ctx>) {
    loop {
        tokio::select! {
            _ = ctx.presence.changed() => {}
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        // Redis down: local only; back: everyone again (§9.2).
        ctx.presence.show_remote(!ctx.cluster.degraded());
        for (topic, flush) in ctx.presence.flush() {
            let registry = &ctx.registry;
            match flush {
                Flush::Diff(diff) => {
                    registry.publish(&topic, "presence_diff", &diff, Select::All);
                }
                Flush::State(state) => {
                    registry.publish(&topic, "presence_state", &state, Select::All);
                }
                Flush::Counts => {
                    let figures = Figures::now(&ctx, &topic);
                    let payload = figures.payload(&topic);
                    registry.publish_figures(&topic, figures.seen(), &payload, true);
                }
            }
        }
        tokio::time::sleep(DIFF_EVERY).await;
    }
}
