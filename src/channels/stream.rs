//! `patterns:stream`: pattern data. Joiners get `initial_stats`; the bus
//! routes pattern events here.

use crate::context::Ctx;
use crate::stats::{raw, timestamp, to_json};
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
struct InitialStats<'a> {
    stats: &'a RawValue,
    monitoring: &'a RawValue,
    timestamp: String,
}

pub fn initial_stats(ctx: &Ctx) -> String {
    let pushed = super::stats::push_filter(ctx);
    // One rendering of the node's stats serves both blocks.
    let stats = raw(ctx.reporter.local(&pushed));
    let monitoring = raw(ctx.reporter.monitoring_around(&stats));
    to_json(&InitialStats {
        stats: &stats,
        monitoring: &monitoring,
        timestamp: timestamp(),
    })
}
