//! V2 serializer: text frames are JSON arrays
//! `[join_ref, ref, topic, event, payload]`; binary frames (kind 0, push)
//! carry u8 sizes of join_ref, ref, topic and event, then those fields, then
//! the payload bytes.

use super::v1::string;
use super::{Inbound, JsonRef, Malformed, Payload};
use serde_json::value::RawValue;

pub(super) fn decode_json(text: &str) -> Result<Inbound, Malformed> {
    let items: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|_| Malformed::unrecoverable())?;
    let join_ref = items.first().and_then(|r| JsonRef::from_raw(r));
    let reference = items.get(1).and_then(|r| JsonRef::from_raw(r));
    let topic = items.get(2).and_then(|r| string(r));
    let event = items.get(3).and_then(|r| string(r));
    match (items.len(), join_ref, reference, topic, event) {
        (5, Some(join_ref), Some(reference), Some(topic), Some(event)) => Ok(Inbound {
            join_ref: Some(join_ref),
            reference,
            topic,
            event,
            payload: Payload::Json(items[4].to_owned()),
        }),
        (_, join_ref, reference, topic, _) => Err(Malformed {
            join_ref,
            reference,
            topic,
        }),
    }
}

const KIND_PUSH: u8 = 0;
const HEADER: usize = 5;

pub(super) fn decode_binary(data: &[u8]) -> Result<Inbound, Malformed> {
    if data.len() < HEADER || data[0] != KIND_PUSH {
        return Err(Malformed::unrecoverable());
    }
    let sizes = [data[1], data[2], data[3], data[4]].map(usize::from);
    let mut fields: [Option<&str>; 4] = [None; 4];
    let mut at = HEADER;
    for (i, size) in sizes.iter().enumerate() {
        let Some(bytes) = data.get(at..at + size) else {
            break;
        };
        fields[i] = std::str::from_utf8(bytes).ok();
        at += size;
    }
    let [join_ref, reference, topic, event] = fields;
    let join_ref = join_ref.map(JsonRef::from_str_value);
    let reference = reference.map(JsonRef::from_str_value);
    match (join_ref, reference, topic, event) {
        (join_ref, Some(reference), Some(topic), Some(event)) => Ok(Inbound {
            join_ref,
            reference,
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: Payload::Binary,
        }),
        (join_ref, reference, topic, _) => Err(Malformed {
            join_ref,
            reference,
            topic: topic.map(str::to_owned),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(join_ref: &str, r: &str, topic: &str, event: &str, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![
            0,
            join_ref.len() as u8,
            r.len() as u8,
            topic.len() as u8,
            event.len() as u8,
        ];
        for f in [join_ref, r, topic, event] {
            v.extend_from_slice(f.as_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_array_frame() {
        let m = decode_json(r#"["1","2","patterns:stats","phx_join",{}]"#).unwrap();
        assert_eq!(m.join_ref.unwrap().as_json(), "\"1\"");
        assert_eq!(m.reference.as_json(), "\"2\"");
        assert_eq!(m.topic, "patterns:stats");
    }

    #[test]
    fn wrong_arity_recovers_topic_and_ref() {
        let e = decode_json(r#"["1","2","t","e"]"#).unwrap_err();
        assert_eq!(e.topic.as_deref(), Some("t"));
        assert!(e.reference.is_some());
    }

    #[test]
    fn decodes_binary_push() {
        let m = decode_binary(&binary("1", "22", "room:a", "ev", &[1, 2, 3])).unwrap();
        assert_eq!(m.reference.as_json(), "\"22\"");
        assert_eq!(m.topic, "room:a");
        assert!(matches!(m.payload, Payload::Binary));
    }

    #[test]
    fn truncated_binary_header_is_unrecoverable() {
        assert!(decode_binary(&[0, 1, 2]).unwrap_err().topic.is_none());
        let mut v = binary("1", "2", "topic", "event", b"");
        v.truncate(8);
        let e = decode_binary(&v).unwrap_err();
        assert!(e.topic.is_none());
        assert!(e.reference.is_some());
    }
}
