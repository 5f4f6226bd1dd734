//! Phoenix Channels V2 frames as the floor server reads and writes them:
//! `[join_ref, ref, topic, event, payload]` in, replies, pushes and
//! `phx_close` out. `join_ref` and `ref` are kept as raw JSON so replies
//! echo them back unchanged (string, number or null), and payloads are
//! relayed as the client wrote them.

use serde::Deserialize;
use serde_json::value::RawValue;

/// One client frame, borrowed from its text.
pub(super) struct Inbound<'a> {
    pub(super) join_ref: &'a str,
    pub(super) reference: &'a str,
    pub(super) topic: String,
    pub(super) event: String,
    pub(super) payload: &'a RawValue,
}

/// A V2 text frame, or `None` when it is not a five-element array of the
/// right types.
pub(super) fn decode(text: &str) -> Option<Inbound<'_>> {
    let (join_ref, reference, topic, event, payload): (
        &RawValue,
        &RawValue,
        String,
        String,
        &RawValue,
    ) = serde_json::from_str(text).ok()?;
    Some(Inbound {
        join_ref: join_ref.get(),
        reference: reference.get(),
        topic,
        event,
        payload,
    })
}

/// The payload of a client `broadcast`: `{"event", "payload"}`.
#[derive(Deserialize)]
pub(super) struct Relay<'a> {
    pub(super) event: String,
    #[serde(borrow)]
    pub(super) payload: &'a RawValue,
}

/// The body of `POST /api/broadcast`: `{"topic", "event", "payload"}`.
#[derive(Deserialize)]
pub(super) struct Broadcast<'a> {
    pub(super) topic: String,
    pub(super) event: String,
    #[serde(borrow)]
    pub(super) payload: &'a RawValue,
}

/// The join payload's one option the floor knows.
#[derive(Deserialize, Default)]
pub(super) struct JoinParams {
    #[serde(default)]
    pub(super) occupancy: bool,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `phx_reply` with `status` and `response` (raw JSON).
pub(super) fn reply(inbound: &Inbound<'_>, ok: bool, response: &str) -> String {
    format!(
        "[{},{},{},\"phx_reply\",{{\"status\":\"{}\",\"response\":{response}}}]",
        inbound.join_ref,
        inbound.reference,
        json_str(&inbound.topic),
        if ok { "ok" } else { "error" }
    )
}

/// An error reply `{"reason": reason}`.
pub(super) fn error(inbound: &Inbound<'_>, reason: &str) -> String {
    reply(
        inbound,
        false,
        &format!("{{\"reason\":{}}}", json_str(reason)),
    )
}

/// A broadcast push: `[null, null, topic, event, payload]`.
pub(super) fn push(topic: &str, event: &str, payload: &str) -> String {
    format!(
        "[null,null,{},{},{payload}]",
        json_str(topic),
        json_str(event)
    )
}

/// The end of a membership: `[join_ref, join_ref, topic, "phx_close", {}]`.
pub(super) fn close(join_ref: &str, topic: &str) -> String {
    format!(
        "[{join_ref},{join_ref},{},\"phx_close\",{{}}]",
        json_str(topic)
    )
}

/// An `occupancy` push of `topic` with `connections` members now.
pub(super) fn occupancy(topic: &str, connections: usize, unix_ms: u64) -> String {
    push(
        topic,
        "occupancy",
        &format!(
            "{{\"topic\":{},\"connections\":{connections},\"timestamp\":{unix_ms}}}",
            json_str(topic)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_refs_unchanged() {
        let f = decode(r#"["1",7,"room:\"a\"","phx_join",{"occupancy":true}]"#).unwrap();
        assert_eq!(f.join_ref, "\"1\"");
        assert_eq!(f.reference, "7");
        assert_eq!(f.topic, "room:\"a\"");
        assert_eq!(f.event, "phx_join");
        let p: JoinParams = serde_json::from_str(f.payload.get()).unwrap();
        assert!(p.occupancy);
        assert_eq!(
            reply(&f, true, "{}"),
            r#"["1",7,"room:\"a\"","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            error(&f, "unmatched topic"),
            r#"["1",7,"room:\"a\"","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
        let f = decode(r#"[null,null,"t","broadcast",{"event":"e","payload":{"seq":1}}]"#).unwrap();
        let r: Relay = serde_json::from_str(f.payload.get()).unwrap();
        assert_eq!(
            push("t", &r.event, r.payload.get()),
            r#"[null,null,"t","e",{"seq":1}]"#
        );
        assert_eq!(close("\"3\"", "t"), r#"["3","3","t","phx_close",{}]"#);
        assert_eq!(
            occupancy("t", 4, 9),
            r#"[null,null,"t","occupancy",{"topic":"t","connections":4,"timestamp":9}]"#
        );
        for bad in ["", "{}", "[1,2,3]", r#"[null,null,1,"e",{}]"#, "not json"] {
            assert!(decode(bad).is_none(), "{bad}");
        }
    }
}
