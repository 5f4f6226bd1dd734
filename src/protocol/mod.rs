//! The Phoenix Channels wire format, and nothing else: decoding client frames
//! into `Inbound` messages and encoding replies and pushes for V1 (JSON
//! objects) and V2 (JSON arrays, binary pushes). It knows no channels or counts.

mod v1;
mod v2;

use bytes::Bytes;
use serde_json::value::RawValue;
use std::fmt::Write as _;

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
    pub fn null() -> JsonRef {
        JsonRef("null".into())
    }

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

/// What a client pushed: JSON (passed through untouched) or binary bytes.
#[derive(Debug)]
pub enum Payload {
    Json(Box<RawValue>),
    Binary(Bytes),
}

impl Payload {
    pub fn json(&self) -> Option<&RawValue> {
        match self {
            Payload::Json(raw) => Some(raw),
            Payload::Binary(_) => None,
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
    let mut out = String::with_capacity(payload.len() + topic.len() + event.len() + 48);
    match vsn {
        Vsn::V1 => {
            out.push_str("{\"topic\":");
            push_json_string(&mut out, topic);
            out.push_str(",\"event\":");
            push_json_string(&mut out, event);
            out.push_str(",\"payload\":");
            out.push_str(payload);
            out.push_str(",\"ref\":");
            out.push_str(reference.map_or("null", JsonRef::as_json));
            out.push('}');
        }
        Vsn::V2 => {
            out.push('[');
            out.push_str(join_ref.map_or("null", JsonRef::as_json));
            out.push(',');
            out.push_str(reference.map_or("null", JsonRef::as_json));
            out.push(',');
            push_json_string(&mut out, topic);
            out.push(',');
            push_json_string(&mut out, event);
            out.push(',');
            out.push_str(payload);
            out.push(']');
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
    let status = if ok { "ok" } else { "error" };
    let mut payload = String::with_capacity(response.len() + 32);
    let _ = write!(
        payload,
        "{{\"status\":\"{status}\",\"response\":{response}}}"
    );
    encode(vsn, join_ref, Some(reference), topic, "phx_reply", &payload)
}

/// The JSON text of a string.
pub fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    push_json_string(&mut out, value);
    out
}

fn push_json_string(out: &mut String, value: &str) {
    // serde_json's escaping, written straight into our buffer.
    match serde_json::to_string(value) {
        Ok(s) => out.push_str(&s),
        Err(_) => out.push_str("\"\""),
    }
}

/// The reply body of an error: `{"reason": reason}`.
pub fn reason(reason: &str) -> String {
    format!("{{\"reason\":{}}}", json_string(reason))
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
    fn v2_broadcast_has_null_refs() {
        let out = encode(Vsn::V2, None, None, "t", "e", "{\"a\":1}");
        assert_eq!(&out[..], br#"[null,null,"t","e",{"a":1}]"#);
    }
}
