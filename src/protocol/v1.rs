//! V1 serializer: each frame is a JSON object
//! `{"topic","event","payload","ref","join_ref"?}`.

use super::{Inbound, JsonRef, Malformed, Payload};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present", rename = "ref")]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    join_ref: Option<&'a RawValue>,
}

/// Keeps an explicit `null` as `Some(null)`, so only a missing key is `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

pub(super) fn decode(text: &str) -> Result<Inbound, Malformed> {
    // A V1 frame is an object. serde's derived `Deserialize` would also read
    // a JSON array into `Frame`, positionally (`["t","e",{},"1"]` as topic,
    // event, payload, ref): refuse anything else first.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(Malformed::unrecoverable());
    }
    let frame: Frame = serde_json::from_str(text).map_err(|_| Malformed::unrecoverable())?;
    let topic = frame.topic.and_then(string);
    let reference = frame.reference.and_then(JsonRef::from_raw);
    let join_ref = match frame.join_ref {
        None => Ok(None),
        Some(raw) => JsonRef::from_raw(raw).map(Some).ok_or(()),
    };
    let event = frame.event.and_then(string);
    match (topic, reference, join_ref, event, frame.payload) {
        (Some(topic), Some(reference), Ok(join_ref), Some(event), Some(payload)) => Ok(Inbound {
            join_ref,
            reference,
            topic,
            event,
            payload: Payload::Json(payload.to_owned()),
        }),
        (topic, reference, join_ref, _, _) => Err(Malformed {
            join_ref: join_ref.ok().flatten(),
            reference,
            topic,
        }),
    }
}

pub(super) fn string(raw: &RawValue) -> Option<String> {
    if raw.get().starts_with('"') {
        serde_json::from_str(raw.get()).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_seed_example_with_number_ref() {
        let m = decode(r#"{"topic":"patterns:stats","event":"phx_join","payload":{},"ref":1}"#)
            .unwrap();
        assert_eq!(m.topic, "patterns:stats");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.reference.as_json(), "1");
        assert!(m.join_ref.is_none());
    }

    #[test]
    fn null_ref_is_kept_as_null() {
        let m =
            decode(r#"{"topic":"t","event":"e","payload":{},"ref":null,"join_ref":"3"}"#).unwrap();
        assert!(m.reference.is_null());
        assert_eq!(m.join_ref.unwrap().as_json(), "\"3\"");
    }

    #[test]
    fn wrong_types_are_malformed_but_recoverable() {
        let e = decode(r#"{"topic":"t","event":5,"payload":{},"ref":"7"}"#).unwrap_err();
        assert_eq!(e.topic.as_deref(), Some("t"));
        assert_eq!(e.reference.unwrap().as_json(), "\"7\"");
        let e = decode(r#"{"topic":"t","event":"e","ref":"7"}"#).unwrap_err();
        assert!(e.topic.is_some());
        let e = decode(r#"{"topic":"t","event":"e","payload":{},"ref":{}}"#).unwrap_err();
        assert!(e.reference.is_none());
    }

    #[test]
    fn bad_json_is_unrecoverable() {
        let e = decode("{nope").unwrap_err();
        assert!(e.topic.is_none() && e.reference.is_none());
        assert!(decode("[1,2]").is_err());
    }

    #[test]
    fn an_array_is_not_a_v1_frame() {
        // Found by the fuzzer: read positionally, this was a push on `t`.
        let e = decode(r#"["t","e",{},"1"]"#).unwrap_err();
        assert!(e.topic.is_none() && e.reference.is_none() && e.join_ref.is_none());
        let m = decode(" \n{\"topic\":\"t\",\"event\":\"e\",\"payload\":{},\"ref\":1}").unwrap();
        assert_eq!(m.topic, "t");
    }
}
