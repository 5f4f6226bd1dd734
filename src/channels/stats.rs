//! `patterns:stats`: statistics queries, and the two per-node timers that
//! feed every subscriber at once: `stats_update` every `--stats-interval-ms`
//! and, for members that joined with `changes: true`, `stats_changed`
//! coalesced to at most one per 100 ms. Each is encoded once and fanned out.

use super::{Answer, Handled, STATS};
use crate::context::Ctx;
use crate::hub::{Select, Tag};
use crate::stats;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

pub const CHANGES_EVERY: Duration = Duration::from_millis(100);

pub fn join(params: &Map<String, Value>) -> Tag {
    Tag::Stats {
        changes: params.get("changes") == Some(&Value::Bool(true)),
    }
}

pub fn update_payload(ctx: &Ctx) -> String {
    format!(
        "{{\"connections\":{},\"timestamp\":\"{}\"}}",
        stats::local_stats(&ctx.tally),
        stats::timestamp()
    )
}

pub fn handle(ctx: &Arc<Ctx>, event: &str) -> Option<Handled> {
    match event {
        "get_local_stats" => Some(Handled::Now(Answer {
            ok: true,
            body: stats::local_stats(&ctx.tally),
            push: Some("local_stats"),
        })),
        "get_cluster_stats" => {
            let cluster = ctx.cluster();
            if let Some(body) = cluster.stats_now(ctx) {
                return Some(Handled::Now(Answer {
                    ok: true,
                    body,
                    push: Some("cluster_stats"),
                }));
            }
            let ctx = ctx.clone();
            Some(Handled::Later(Box::pin(async move {
                Answer {
                    ok: true,
                    body: ctx.cluster().stats(&ctx).await,
                    push: Some("cluster_stats"),
                }
            })))
        }
        _ => None,
    }
}

/// One timer per node: `stats_update` to every `patterns:stats` member.
pub async fn run_updates(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.config.stats_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let shutdown = ctx.shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                if ctx.hub.subscriber_count(STATS) > 0 {
                    ctx.hub.publish(STATS, "stats_update", &update_payload(&ctx), Select::All);
                }
            }
        }
    }
}

/// `stats_changed` after any count changes, at most once per 100 ms.
pub async fn run_changes(ctx: Arc<Ctx>) {
    let mut changes = ctx.tally.watch();
    let shutdown = ctx.shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        changes.borrow_and_update();
        if ctx.hub.subscriber_count(STATS) > 0 {
            let payload = stats::local_stats(&ctx.tally);
            ctx.hub
                .publish(STATS, "stats_changed", &payload, Select::Changes);
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(CHANGES_EVERY) => {}
        }
    }
}
