//! `patterns:stats`: statistics queries, and the two per-node timers that
//! feed every member at once: `stats_update` every `--stats-interval-ms`
//! and, for members that joined with `changes: true`, `stats_changed`
//! coalesced to at most one per 100 ms. Each is encoded once and fanned out,
//! and carries at most `--stats-topic-limit` topics (§7.3).

use super::{filtered, Answer};
use crate::context::Ctx;
use crate::protocol::Payload;
use crate::registry::{Select, Tag};
use crate::stats::{raw, timestamp, to_json, Filter};
use crate::topics::STATS;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

pub const CHANGES_EVERY: Duration = Duration::from_millis(100);

pub fn join(params: &Map<String, Value>) -> Tag {
    Tag::Stats {
        changes: params.get("changes") == Some(&Value::Bool(true)),
    }
}

#[derive(Serialize)]
struct StatsUpdate<'a> {
    connections: &'a RawValue,
    timestamp: String,
}

/// What pushes carry: the largest `--stats-topic-limit` topics.
pub fn push_filter(ctx: &Ctx) -> Filter {
    Filter::top(ctx.config.stats_topic_limit)
}

pub fn update_payload(ctx: &Ctx) -> String {
    let local = raw(ctx.reporter.local(&push_filter(ctx)));
    to_json(&StatsUpdate {
        connections: &local,
        timestamp: timestamp(),
    })
}

pub fn handle(ctx: &Ctx, event: &str, payload: &Payload) -> Option<Answer> {
    let (push, answer): (&'static str, &dyn Fn(&Filter) -> String) = match event {
        "get_local_stats" => ("local_stats", &|f| ctx.reporter.local(f)),
        "get_cluster_stats" => ("cluster_stats", &|f| ctx.cluster.stats(f)),
        _ => return None,
    };
    Some(filtered(payload, |f| Answer {
        ok: true,
        body: answer(f),
        push: Some(push),
    }))
}

/// One timer per node: `stats_update` to every `patterns:stats` member.
pub async fn run_updates(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.config.stats_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if ctx.registry.has_members(STATS, Select::All) {
            let payload = update_payload(&ctx);
            ctx.registry
                .publish(STATS, "stats_update", &payload, Select::All);
        }
    }
}

/// `stats_changed` after any count changes, at most once per 100 ms.
pub async fn run_changes(ctx: Arc<Ctx>) {
    let mut changes = ctx.registry.watch();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        changes.borrow_and_update();
        if ctx.registry.has_members(STATS, Select::Changes) {
            let payload = ctx.reporter.local(&push_filter(&ctx));
            ctx.registry
                .publish(STATS, "stats_changed", &payload, Select::Changes);
        }
        tokio::time::sleep(CHANGES_EVERY).await;
    }
}
