//! Generic topics allowed by `--allow-topic`: counted like the built-ins,
//! they take `/api/broadcast` messages and, with `--client-broadcast`, relay
//! a member's `broadcast` push to every member cluster-wide.

use super::{Answer, Handled};
use crate::context::Ctx;
use crate::protocol::{reason, Payload};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct ClientBroadcast<'a> {
    event: String,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

pub fn handle(ctx: &Ctx, topic: &str, event: &str, payload: &Payload) -> Option<Handled> {
    if event != "broadcast" {
        return None;
    }
    if !ctx.config.client_broadcast {
        return Some(Handled::Now(Answer::error(reason(
            "client broadcast disabled",
        ))));
    }
    let parsed = payload
        .json()
        .and_then(|raw| serde_json::from_str::<ClientBroadcast>(raw.get()).ok())
        .filter(|b| !b.event.is_empty());
    let Some(b) = parsed else {
        return Some(Handled::Now(Answer::error(reason(
            "broadcast needs {\"event\": string, \"payload\": any}",
        ))));
    };
    let inner = b.payload.map_or("{}", RawValue::get);
    ctx.bus.broadcast(topic, &b.event, inner);
    Some(Handled::Now(Answer::ok("{}".into())))
}
