//! The Phoenix Channels wire format, and nothing else: decoding client frames
//! into `Inbound` messages and encoding replies and pushes for V1 (JSON
//! objects) and V2 (JSON arrays, binary pushes). It knows no channels or counts.

mod v1;
mod v2;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// Which serializer a socket speaks, chosen by the `vsn` connect parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// `vsn` absent or `1.x` is V1, `2.x` is V2, anything else is refused.
    pub fn from_param(vsn: Option<&str>) -> Option<Vsn> {
        match vsn {
            None => Some(Vsn::V1),
            Some(v) if v == "1" || v.starts_with("1.") => Some(Vsn::V1),
            Some(v) if v == "2" || v.starts_with("2.") => Some(Vsn::V2),
            Some(_) => None,
        }
    }
}

/// A `ref` or `join_ref` exactly as the client sent it: the JSON text of a
/// string, a number or null, so a reply can echo it with the same JSON type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonRef(Box<str>);

impl JsonRef {
    /// Accepts the raw JSON of a string, a number or null; refuses the rest.
    pub fn from_raw(raw: &RawValue) -> Option<JsonRef> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') | Some(b'-') | Some(b'0'..=b'9') => Some(JsonRef(text.into())),
            Some(b'n') if text == "null" => Some(JsonRef(text.into())),
            _ => None,
        }
    }

    /// A ref that arrived as raw bytes (V2 binary frames) becomes a JSON string.
    pub fn from_str_value(value: &str) -> JsonRef {
        JsonRef(json_string(value).into())
    }

    pub fn is_null(&self) -> bool {
        &*self.0 == "null"
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// What a client pushed: JSON (passed through untouched), or binary bytes,
/// which no channel takes (each answers such a push with an error).
#[derive(Debug)]
pub enum Payload {
    Json(Box<RawValue>),
    Binary,
}

impl Payload {
    pub fn json(&self) -> Option<&RawValue> {
        match self {
            Payload::Json(raw) => Some(raw),
            Payload::Binary => None,
        }
    }
}

/// One decoded client message.
#[derive(Debug)]
pub struct Inbound {
    /// Absent in V1 frames that do not carry one; `Some(null)` when sent as null.
    pub join_ref: Option<JsonRef>,
    pub reference: JsonRef,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// A frame that could not be decoded. When its topic and ref could be
/// recovered the client gets a `malformed message` reply; otherwise it is dropped.
#[derive(Debug, Default)]
pub struct Malformed {
    pub join_ref: Option<JsonRef>,
    pub reference: Option<JsonRef>,
    pub topic: Option<String>,
}

impl Malformed {
    pub fn unrecoverable() -> Malformed {
        Malformed::default()
    }
}

/// Decodes a text frame with the socket's serializer.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, Malformed> {
    match vsn {
        Vsn::V1 => v1::decode(text),
        Vsn::V2 => v2::decode_json(text),
    }
}

/// Decodes a binary frame (V2 push, kind 0). V1 has no binary frames.
pub fn decode_binary(vsn: Vsn, data: &[u8]) -> Result<Inbound, Malformed> {
    match vsn {
        Vsn::V1 => Err(Malformed::unrecoverable()),
        Vsn::V2 => v2::decode_binary(data),
    }
}

/// Encodes a push or a broadcast. `join_ref` and `reference` are null for
/// broadcasts; `payload` must be valid JSON.
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&JsonRef>,
    reference: Option<&JsonRef>,
    topic: &str,
    event: &str,
    payload: &str,
) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + topic.len() + event.len() + 48);
    match vsn {
        Vsn::V1 => {
            out.extend_from_slice(b"{\"topic\":");
            push_json_string(&mut out, topic);
            out.extend_from_slice(b",\"event\":");
            push_json_string(&mut out, event);
            out.extend_from_slice(b",\"payload\":");
            out.extend_from_slice(payload.as_bytes());
            out.extend_from_slice(b",\"ref\":");
            out.extend_from_slice(reference.map_or("null", JsonRef::as_json).as_bytes());
            out.push(b'}');
        }
        Vsn::V2 => {
            out.push(b'[');
            out.extend_from_slice(join_ref.map_or("null", JsonRef::as_json).as_bytes());
            out.push(b',');
            out.extend_from_slice(reference.map_or("null", JsonRef::as_json).as_bytes());
            out.push(b',');
            push_json_string(&mut out, topic);
            out.push(b',');
            push_json_string(&mut out, event);
            out.push(b',');
            out.extend_from_slice(payload.as_bytes());
            out.push(b']');
        }
    }
    Bytes::from(out)
}

/// Encodes a `phx_reply` to a request.
pub fn encode_reply(
    vsn: Vsn,
    join_ref: Option<&JsonRef>,
    reference: &JsonRef,
    topic: &str,
    ok: bool,
    response: &str,
) -> Bytes {
    let mut payload = String::with_capacity(response.len() + 32);
    payload.push_str(if ok {
        "{\"status\":\"ok\",\"response\":"
    } else {
        "{\"status\":\"error\",\"response\":"
    });
    payload.push_str(response);
    payload.push('}');
    encode(vsn, join_ref, Some(reference), topic, "phx_reply", &payload)
}

/// The JSON text of a string.
pub fn json_string(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".into())
}

fn push_json_string(out: &mut Vec<u8>, value: &str) {
    // serde_json's escaping, written straight into the frame; writing into
    // a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[derive(Serialize)]
struct Reason<'a> {
    reason: &'a str,
}

/// The reply body of an error: `{"reason": reason}`.
pub fn reason(reason: &str) -> String {
    serde_json::to_string(&Reason { reason }).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsn_selection() {
        assert_eq!(Vsn::from_param(None), Some(Vsn::V1));
        assert_eq!(Vsn::from_param(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::from_param(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::from_param(Some("3.0.0")), None);
        assert_eq!(Vsn::from_param(Some("")), None);
        assert_eq!(Vsn::from_param(Some("10.0")), None);
    }

    #[test]
    fn v1_reply_echoes_number_ref() {
        let r = JsonRef::from_raw(&RawValue::from_string("2".into()).unwrap()).unwrap();
        let out = encode_reply(Vsn::V1, None, &r, "patterns:stats", true, "{}");
        assert_eq!(
            &out[..],
            br#"{"topic":"patterns:stats","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":2}"#
        );
    }

    #[test]
    fn error_reply_carries_the_reason() {
        let r = JsonRef::from_str_value("1");
        let out = encode_reply(Vsn::V2, None, &r, "t", false, &reason("a \"b\""));
        assert_eq!(
            &out[..],
            br#"[null,"1","t","phx_reply",{"status":"error","response":{"reason":"a \"b\""}}]"#
        );
    }

    #[test]
    fn v2_broadcast_has_null_refs() {
        let out = encode(Vsn::V2, None, None, "t", "e", "{\"a\":1}");
        assert_eq!(&out[..], br#"[null,null,"t","e",{"a":1}]"#);
    }
}
