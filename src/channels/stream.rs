//! `patterns:stream`: pattern data. Joiners get `initial_stats`; the bus
//! routes pattern events here.

use crate::context::Ctx;
use crate::stats;

pub fn initial_stats(ctx: &Ctx) -> String {
    format!(
        "{{\"stats\":{},\"monitoring\":{},\"timestamp\":\"{}\"}}",
        stats::local_stats(&ctx.tally),
        stats::monitoring(&ctx.tally, ctx.started),
        stats::timestamp()
    )
}
