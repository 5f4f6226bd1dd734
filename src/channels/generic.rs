//! Generic topics allowed by `--allow-topic`: counted like the built-ins,
//! they take `/api/broadcast` messages and, with `--client-broadcast`, relay
//! a member's `broadcast` push to every member cluster-wide — never under an
//! event name the protocol gives a meaning to (§4.4).

use super::Answer;
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

pub fn handle(ctx: &Ctx, topic: &str, event: &str, payload: &Payload) -> Option<Answer> {
    if event != "broadcast" {
        return None;
    }
    if !ctx.config.client_broadcast {
        return Some(Answer::error(reason("client broadcast disabled")));
    }
    let parsed = payload
        .json()
        .and_then(|raw| serde_json::from_str::<ClientBroadcast>(raw.get()).ok())
        .filter(|b| !b.event.is_empty());
    let Some(b) = parsed else {
        return Some(Answer::error(reason(
            "broadcast needs {\"event\": string, \"payload\": any}",
        )));
    };
    if crate::bus::reserved(&b.event) {
        return Some(Answer::error(reason("reserved event")));
    }
    let inner = b.payload.map_or("{}", RawValue::get);
    ctx.bus.broadcast(topic, &b.event, inner);
    Some(Answer::ok("{}".into()))
}
