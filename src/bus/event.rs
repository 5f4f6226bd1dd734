//! Producer events (SPEC §5): each `{"type", "data"}` is validated field by
//! field and shaped into the pushes it becomes — which topic, which push
//! event, exactly which payload fields with which defaults.

use super::Delivery;
use crate::topics::{STREAM, VSM};
use serde_json::{Map, Value};

/// A validated event, ready to be shaped.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    deliveries: Vec<Delivery>,
}

/// What is wrong with an event; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EventError(pub String);

#[derive(Clone, Copy)]
enum Kind {
    PatternsIndexed,
    PatternMatched,
    PatternDetected,
    TemporalPatternDetected,
    AlgedonicSignal,
    VsmPatternFlow,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "patterns_indexed" => Kind::PatternsIndexed,
            "pattern_matched" => Kind::PatternMatched,
            "pattern_detected" => Kind::PatternDetected,
            "temporal_pattern_detected" => Kind::TemporalPatternDetected,
            "algedonic_signal" => Kind::AlgedonicSignal,
            "vsm_pattern_flow" => Kind::VsmPatternFlow,
            _ => return None,
        })
    }
}

/// Expected JSON type of a field.
#[derive(Clone, Copy)]
enum Ty {
    Any,
    Number,
    Count,
    BoolOrInt,
    Object,
}

fn check(data: &Map<String, Value>, field: &str, ty: Ty) -> Result<Option<Value>, EventError> {
    let value = match data.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let ok = match ty {
        Ty::Any => true,
        Ty::Number => value.is_number(),
        Ty::Count => value.is_u64(),
        Ty::BoolOrInt => value.is_boolean() || value.is_i64() || value.is_u64(),
        Ty::Object => value.is_object(),
    };
    if ok {
        Ok(Some(value.clone()))
    } else {
        let what = match ty {
            Ty::Any => "any value",
            Ty::Number => "a number",
            Ty::Count => "a non-negative integer",
            Ty::BoolOrInt => "a boolean or an integer",
            Ty::Object => "an object",
        };
        Err(EventError(format!("field \"data.{field}\" must be {what}")))
    }
}

/// Builds a payload of exactly `fields`, each with its default when missing.
fn payload(
    data: &Map<String, Value>,
    fields: &[(&str, Ty, Value)],
) -> Result<Map<String, Value>, EventError> {
    let mut out = Map::new();
    for (name, ty, default) in fields {
        let value = check(data, name, *ty)?.unwrap_or_else(|| default.clone());
        out.insert((*name).to_owned(), value);
    }
    let timestamp = check(data, "timestamp", Ty::Any)?
        .unwrap_or_else(|| Value::String(crate::stats::timestamp()));
    out.insert("timestamp".into(), timestamp);
    Ok(out)
}

fn delivery(
    topic: &str,
    event: &str,
    payload: &Map<String, Value>,
    subsystem: Option<u8>,
) -> Delivery {
    Delivery {
        topic: topic.into(),
        event: event.into(),
        payload: Value::Object(payload.clone()).to_string(),
        subsystem,
    }
}

/// `S1`..`S5` in any case → 1..=5.
pub fn subsystem_number(name: &str) -> Option<u8> {
    match name.as_bytes() {
        [b's' | b'S', d @ b'1'..=b'5'] => Some(d - b'0'),
        _ => None,
    }
}

impl Event {
    /// Validates an event of `kind` (SPEC §5 `type`) with its `data` object.
    pub fn new(kind: &str, data: Value) -> Result<Event, EventError> {
        let Some(k) = Kind::parse(kind) else {
            return Err(EventError(format!("unknown event type {kind:?}")));
        };
        let data = match data {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => return Err(EventError("field \"data\" must be an object".into())),
        };
        let null = Value::Null;
        let empty = Value::Object(Map::new());
        let deliveries = match k {
            Kind::PatternsIndexed => {
                let p = payload(
                    &data,
                    &[
                        ("count", Ty::Count, null.clone()),
                        ("deduplicated", Ty::BoolOrInt, null.clone()),
                        ("source", Ty::Any, null.clone()),
                    ],
                )?;
                vec![delivery(STREAM, "pattern_indexed", &p, None)]
            }
            Kind::PatternMatched => {
                let mut p = payload(
                    &data,
                    &[
                        ("pattern_id", Ty::Any, null.clone()),
                        ("confidence", Ty::Number, null.clone()),
                        ("type", Ty::Any, null.clone()),
                        ("context", Ty::Object, empty.clone()),
                    ],
                )?;
                if let Some(Value::Object(ctx)) = p.get_mut("context") {
                    ctx.retain(|k, _| {
                        matches!(k.as_str(), "type" | "confidence" | "source" | "subsystem")
                    });
                }
                vec![delivery(STREAM, "pattern_matched", &p, None)]
            }
            Kind::PatternDetected => {
                let p = payload(
                    &data,
                    &[
                        ("pattern_type", Ty::Any, Value::from("unknown")),
                        ("confidence", Ty::Number, Value::from(0.0)),
                        ("source", Ty::Any, Value::from("s4_intelligence")),
                        ("severity", Ty::Any, Value::from("normal")),
                        ("metadata", Ty::Object, empty.clone()),
                        ("vsm_impact", Ty::Any, null.clone()),
                    ],
                )?;
                vec![
                    delivery(STREAM, "pattern_detected", &p, None),
                    delivery(VSM, "pattern_detected", &p, None),
                ]
            }
            Kind::TemporalPatternDetected => {
                let p = payload(
                    &data,
                    &[
                        ("pattern_type", Ty::Any, null.clone()),
                        ("confidence", Ty::Number, null.clone()),
                        ("source", Ty::Any, null.clone()),
                        ("time_window", Ty::Any, null.clone()),
                        ("frequency", Ty::Any, null.clone()),
                        ("metadata", Ty::Object, empty.clone()),
                    ],
                )?;
                vec![
                    delivery(STREAM, "temporal_pattern_detected", &p, None),
                    delivery(VSM, "temporal_pattern_detected", &p, None),
                ]
            }
            Kind::AlgedonicSignal => {
                let mut p = payload(
                    &data,
                    &[
                        ("type", Ty::Any, null.clone()),
                        ("intensity", Ty::Number, null.clone()),
                        ("source", Ty::Any, null.clone()),
                        ("pattern_vector", Ty::Any, null.clone()),
                    ],
                )?;
                let intense = p
                    .get("intensity")
                    .and_then(Value::as_f64)
                    .is_some_and(|i| i > 0.8);
                if intense {
                    p.insert("severity".into(), Value::from("critical"));
                    vec![delivery(STREAM, "algedonic_pattern", &p, None)]
                } else {
                    Vec::new()
                }
            }
            Kind::VsmPatternFlow => {
                let n = match data.get("subsystem") {
                    Some(Value::String(s)) => subsystem_number(s),
                    _ => None,
                }
                .ok_or_else(|| {
                    EventError("field \"data.subsystem\" must be one of S1..S5".into())
                })?;
                let mut p = payload(
                    &data,
                    &[
                        ("subsystem", Ty::Any, null.clone()),
                        ("pattern_type", Ty::Any, null.clone()),
                        ("confidence", Ty::Number, null.clone()),
                        ("flow_direction", Ty::Any, null.clone()),
                        ("variety_type", Ty::Any, null.clone()),
                        ("metadata", Ty::Object, empty.clone()),
                    ],
                )?;
                p.insert("subsystem".into(), Value::from(format!("S{n}")));
                vec![delivery(VSM, "vsm_pattern_flow", &p, Some(n))]
            }
        };
        Ok(Event { deliveries })
    }

    /// An event in its wire shape `{"type": …, "data": {…}}`.
    pub fn from_json(value: Value) -> Result<Event, EventError> {
        let Value::Object(mut map) = value else {
            return Err(EventError(
                "an event must be an object with \"type\" and \"data\"".into(),
            ));
        };
        let kind = match map.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(_) => return Err(EventError("field \"type\" must be a string".into())),
            None => return Err(EventError("field \"type\" is missing".into())),
        };
        Event::new(&kind, map.remove("data").unwrap_or(Value::Null))
    }

    /// Parses one event or an array of at most `max` events, all or nothing.
    pub fn batch_from_json(value: Value, max: usize) -> Result<Vec<Event>, EventError> {
        match value {
            Value::Array(items) => {
                if items.len() > max {
                    return Err(EventError(format!(
                        "too many events: {} (at most {max} per request)",
                        items.len()
                    )));
                }
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        Event::from_json(v).map_err(|e| EventError(format!("event {i}: {}", e.0)))
                    })
                    .collect()
            }
            single => Event::from_json(single)
                .map(|e| vec![e])
                .map_err(|e| EventError(format!("event 0: {}", e.0))),
        }
    }

    /// The pushes this event becomes (none for a mild algedonic signal).
    pub fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(kind: &str, data: Value) -> Vec<(String, String, Value)> {
        Event::new(kind, data)
            .unwrap()
            .deliveries()
            .iter()
            .map(|d| {
                (
                    d.topic.clone(),
                    d.event.clone(),
                    serde_json::from_str(&d.payload).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn pattern_detected_gets_defaults_and_goes_to_stream_and_vsm() {
        let d = one("pattern_detected", json!({"timestamp": "t"}));
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].0, STREAM);
        assert_eq!(d[1].0, VSM);
        assert_eq!(
            d[0].2,
            json!({"pattern_type": "unknown", "confidence": 0.0, "source": "s4_intelligence",
                   "severity": "normal", "metadata": {}, "vsm_impact": null, "timestamp": "t"})
        );
    }

    #[test]
    fn context_keeps_four_keys_and_algedonic_threshold() {
        let d = one(
            "pattern_matched",
            json!({"context": {"type": 1, "x": 2, "subsystem": "s1"}}),
        );
        assert_eq!(d[0].2["context"], json!({"type": 1, "subsystem": "s1"}));
        assert!(one("algedonic_signal", json!({"intensity": 0.8})).is_empty());
        assert!(one("algedonic_signal", json!({})).is_empty());
        let d = one("algedonic_signal", json!({"intensity": 0.81}));
        assert_eq!(d[0].1, "algedonic_pattern");
        assert_eq!(d[0].2["severity"], "critical");
        assert!(Event::new("algedonic_signal", json!({"intensity": "high"})).is_err());
    }

    #[test]
    fn vsm_flow_needs_subsystem_and_batches_name_the_index() {
        assert!(Event::new("vsm_pattern_flow", json!({})).is_err());
        let e = Event::new("vsm_pattern_flow", json!({"subsystem": "s3"})).unwrap();
        assert_eq!(e.deliveries()[0].subsystem, Some(3));
        let err = Event::batch_from_json(
            json!([{"type": "pattern_detected", "data": {}}, {"type": "pattern_detected", "data": {"confidence": "x"}}]),
            1000,
        )
        .unwrap_err();
        assert!(
            err.0.contains("event 1") && err.0.contains("confidence"),
            "{err}"
        );
        assert!(Event::batch_from_json(json!({"type": "nope"}), 10).is_err());
    }
}
