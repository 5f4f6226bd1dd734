//! Target `events`: the producer event validator (`bus::Event`), which
//! shapes whatever arrives on `POST /api/events` or the Redis
//! `<prefix>:events` channel into pushes. Anyone who can write to Redis can
//! reach it, so it gets the same treatment as the socket decoders.
//! Properties, for any JSON value (one event or a batch):
//!
//! - an accepted event becomes exactly the pushes of the SPEC §5 table
//!   (topics, push event names, the vsm subsystem), each payload with
//!   exactly the table's fields: the producer's value where given (and not
//!   null), else the default; `timestamp` the producer's or now, RFC 3339
//!   with milliseconds; `context` cut to its four keys; an algedonic signal
//!   pushed only when `intensity` is a number above 0.8, with `severity`
//!   `critical`;
//! - a rejected one names what is wrong: a field of the wrong type, the
//!   subsystem, `type`, `data`, or the unknown type; a batch is refused as a
//!   whole, naming the index of its first bad event, and one over the limit
//!   is refused for its size.
//!
//! The expectations are written from the SPEC table, not from the code.

use super::mutate::{mutated, seeds};
use super::{ensure, Input, Verdict};
use crate::bus::{Delivery, Event};
use crate::topics::{STREAM, VSM};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const TARGET: &str = "events";
const MAX_BATCH: usize = crate::bus::MAX_BATCH;

const DICT: &[&[u8]] = &[
    b"\"type\":",
    b"\"data\":",
    b"\"confidence\":",
    b"\"intensity\":",
    b"\"count\":",
    b"\"subsystem\":\"s3\"",
    b"\"context\":{",
    b"\"metadata\":",
    b"null",
    b"0.8",
    b"0.80000001",
    b"-1",
    b"18446744073709551615",
    b"1e308",
    b"\"\\u0000\"",
    b"[",
    b"{",
    b",",
];

#[derive(Clone, Debug)]
pub struct EventInput {
    json: Vec<u8>,
    max: usize,
}

impl Input for EventInput {
    fn from_seed(bytes: &[u8]) -> Self {
        EventInput {
            json: bytes.to_vec(),
            max: MAX_BATCH,
        }
    }

    fn to_seed(&self) -> Vec<u8> {
        self.json.clone()
    }
}

#[derive(Clone, Copy)]
enum Ty {
    Any,
    Number,
    Count,
    BoolOrInt,
    Object,
}

impl Ty {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Ty::Any => true,
            Ty::Number => v.is_number(),
            Ty::Count => v.as_u64().is_some(),
            Ty::BoolOrInt => v.is_boolean() || v.is_i64() || v.is_u64(),
            Ty::Object => v.is_object(),
        }
    }
}

/// One row of the SPEC §5 table.
struct Row {
    push: &'static str,
    topics: &'static [&'static str],
    fields: Vec<(&'static str, Ty, Value)>,
}

fn row(kind: &str) -> Option<Row> {
    let null = Value::Null;
    let row = |push, topics, fields| {
        Some(Row {
            push,
            topics,
            fields,
        })
    };
    match kind {
        "patterns_indexed" => row(
            "pattern_indexed",
            &[STREAM],
            vec![
                ("count", Ty::Count, null.clone()),
                ("deduplicated", Ty::BoolOrInt, null.clone()),
                ("source", Ty::Any, null),
            ],
        ),
        "pattern_matched" => row(
            "pattern_matched",
            &[STREAM],
            vec![
                ("pattern_id", Ty::Any, null.clone()),
                ("confidence", Ty::Number, null.clone()),
                ("type", Ty::Any, null),
                ("context", Ty::Object, json!({})),
            ],
        ),
        "pattern_detected" => row(
            "pattern_detected",
            &[STREAM, VSM],
            vec![
                ("pattern_type", Ty::Any, json!("unknown")),
                ("confidence", Ty::Number, json!(0.0)),
                ("source", Ty::Any, json!("s4_intelligence")),
                ("severity", Ty::Any, json!("normal")),
                ("metadata", Ty::Object, json!({})),
                ("vsm_impact", Ty::Any, null),
            ],
        ),
        "temporal_pattern_detected" => row(
            "temporal_pattern_detected",
            &[STREAM, VSM],
            vec![
                ("pattern_type", Ty::Any, null.clone()),
                ("confidence", Ty::Number, null.clone()),
                ("source", Ty::Any, null.clone()),
                ("time_window", Ty::Any, null.clone()),
                ("frequency", Ty::Any, null),
                ("metadata", Ty::Object, json!({})),
            ],
        ),
        "algedonic_signal" => row(
            "algedonic_pattern",
            &[STREAM],
            vec![
                ("type", Ty::Any, null.clone()),
                ("intensity", Ty::Number, null.clone()),
                ("source", Ty::Any, null.clone()),
                ("pattern_vector", Ty::Any, null),
            ],
        ),
        "vsm_pattern_flow" => row(
            "vsm_pattern_flow",
            &[VSM],
            vec![
                ("subsystem", Ty::Any, null.clone()),
                ("pattern_type", Ty::Any, null.clone()),
                ("confidence", Ty::Number, null.clone()),
                ("flow_direction", Ty::Any, null.clone()),
                ("variety_type", Ty::Any, null),
                ("metadata", Ty::Object, json!({})),
            ],
        ),
        _ => None,
    }
}

/// What SPEC §5 says one event becomes: its pushes (topic, event, payload
/// without `timestamp`, subsystem) and the timestamp the producer gave;
/// or, refused, the words one of which the error must contain.
type Pushes = (
    Vec<(String, String, Map<String, Value>, Option<u8>)>,
    Option<Value>,
);

fn expect_event(event: &Value) -> Result<Pushes, Vec<String>> {
    let Value::Object(event) = event else {
        return Err(vec!["\"type\"".into(), "\"data\"".into()]);
    };
    let kind = match event.get("type") {
        Some(Value::String(k)) => k,
        _ => return Err(vec!["\"type\"".into()]),
    };
    let Some(row) = row(kind) else {
        return Err(vec![format!("{kind:?}")]);
    };
    let empty = Map::new();
    let data = match event.get("data") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(d)) => d,
        Some(_) => return Err(vec!["\"data\"".into()]),
    };
    let given = |k: &str| data.get(k).filter(|v| !v.is_null());
    let mut problems = Vec::new();
    let mut subsystem = None;
    if kind == "vsm_pattern_flow" {
        subsystem = match data.get("subsystem") {
            Some(Value::String(s)) if s.len() == 2 => {
                let b = s.as_bytes();
                matches!(b[0], b's' | b'S')
                    .then_some(b[1])
                    .filter(|d| (b'1'..=b'5').contains(d))
                    .map(|d| d - b'0')
            }
            _ => None,
        };
        if subsystem.is_none() {
            problems.push("\"data.subsystem\"".to_owned());
        }
    }
    for (name, ty, _) in &row.fields {
        if given(name).is_some_and(|v| !ty.accepts(v)) {
            problems.push(format!("\"data.{name}\""));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut payload = Map::new();
    for (name, _, default) in &row.fields {
        payload.insert(
            (*name).into(),
            given(name).cloned().unwrap_or_else(|| default.clone()),
        );
    }
    if let Some(Value::Object(ctx)) = payload
        .get_mut("context")
        .filter(|_| kind == "pattern_matched")
    {
        ctx.retain(|k, _| ["type", "confidence", "source", "subsystem"].contains(&k.as_str()));
    }
    if let Some(n) = subsystem {
        payload.insert("subsystem".into(), json!(format!("S{n}")));
    }
    if kind == "algedonic_signal" {
        let intense = payload["intensity"].as_f64().is_some_and(|i| i > 0.8);
        if !intense {
            return Ok((Vec::new(), None));
        }
        payload.insert("severity".into(), json!("critical"));
    }
    let pushes = row
        .topics
        .iter()
        .map(|t| {
            (
                (*t).to_owned(),
                row.push.to_owned(),
                payload.clone(),
                subsystem,
            )
        })
        .collect();
    Ok((pushes, given("timestamp").cloned()))
}

fn is_rfc3339_millis(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

fn check_deliveries(got: &[Delivery], want: &Pushes) -> Verdict {
    let (pushes, timestamp) = want;
    ensure!(
        got.len() == pushes.len(),
        "{} pushes, SPEC says {}: {got:?}",
        got.len(),
        pushes.len()
    );
    for (d, (topic, event, payload, subsystem)) in got.iter().zip(pushes) {
        ensure!(
            d.topic == *topic && d.event == *event && d.subsystem == *subsystem,
            "push {:?} {:?} {:?}, SPEC says {topic} {event} {subsystem:?}",
            d.topic,
            d.event,
            d.subsystem
        );
        // Compared as JSON text, field by field: parsing the payload back
        // would round floats (serde_json's fast float parsing is not exact).
        let Ok(mut sent) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(&d.payload)
        else {
            return Err(format!("payload is not a JSON object: {}", d.payload));
        };
        let ts = sent.remove("timestamp");
        match (ts, timestamp) {
            (Some(got), Some(want)) => {
                let text = want.to_string();
                ensure!(got.get() == text, "timestamp {got}, given {want}")
            }
            (Some(got), None) => ensure!(
                serde_json::from_str(got.get()).is_ok_and(|v| is_rfc3339_millis(&v)),
                "default timestamp {got}"
            ),
            (None, _) => return Err(format!("no timestamp in {}", d.payload)),
        }
        let sent: BTreeMap<&str, &str> = sent.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
        let texts: Vec<String> = payload.values().map(Value::to_string).collect();
        let want: BTreeMap<&str, &str> = payload
            .keys()
            .map(String::as_str)
            .zip(texts.iter().map(String::as_str))
            .collect();
        ensure!(
            sent == want,
            "payload {}\nSPEC says {} plus timestamp",
            d.payload,
            Value::Object(payload.clone())
        );
    }
    Ok(())
}

fn property(input: &EventInput) -> Verdict {
    let Ok(value) = serde_json::from_slice::<Value>(&input.json) else {
        // Not JSON: refused before the validator (400), serde_json's part.
        return Ok(());
    };
    let got = Event::batch_from_json(value.clone(), input.max);
    super::note(
        TARGET,
        match &got {
            Ok(events) if events.iter().any(|e| !e.deliveries().is_empty()) => "accepted, pushed",
            Ok(_) => "accepted, nothing pushed",
            Err(_) => "refused",
        },
    );
    let (events, batch) = match &value {
        Value::Array(items) => (items.clone(), true),
        single => (vec![single.clone()], false),
    };
    if batch && events.len() > input.max {
        return match got {
            Ok(_) => Err(format!(
                "a batch of {} accepted, max {}",
                events.len(),
                input.max
            )),
            Err(e) => {
                ensure!(
                    e.0.contains("too many events"),
                    "over-size batch refused as {e}"
                );
                Ok(())
            }
        };
    }
    let expected: Vec<_> = events.iter().map(expect_event).collect();
    match (got, expected.iter().position(Result::is_err)) {
        (Ok(accepted), None) => {
            ensure!(
                accepted.len() == events.len(),
                "{} events of {}",
                accepted.len(),
                events.len()
            );
            for (event, want) in accepted.iter().zip(&expected) {
                check_deliveries(event.deliveries(), want.as_ref().expect("accepted"))?;
            }
            Ok(())
        }
        (Ok(_), Some(i)) => Err(format!(
            "accepted, but SPEC refuses event {i}: {:?}",
            expected[i].as_ref().err()
        )),
        (Err(e), None) => Err(format!("refused ({e}), but SPEC accepts it")),
        (Err(e), Some(i)) => {
            let words = expected[i].as_ref().expect_err("refused");
            ensure!(
                e.0.starts_with(&format!("event {i}: ")),
                "error {e:?} does not name event {i}"
            );
            ensure!(
                words.iter().any(|w| e.0.contains(w.as_str())),
                "error {e:?} names none of {words:?}"
            );
            Ok(())
        }
    }
}

fn field_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(0)),
        prop_oneof![
            Just(0.8),
            Just(0.8000000000000002),
            Just(0.81),
            Just(-0.0),
            Just(1e300),
            Just(3.0)
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("s1"),
            Just("S5"),
            Just("s6"),
            Just("S0"),
            Just(""),
            Just("x"),
            Just("ss1")
        ]
        .prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Value::Array),
            vec(
                (
                    prop_oneof![
                        Just("type".to_owned()),
                        Just("confidence".to_owned()),
                        Just("source".to_owned()),
                        Just("subsystem".to_owned()),
                        "[a-z]{1,5}"
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "count",
    "deduplicated",
    "source",
    "pattern_id",
    "confidence",
    "type",
    "context",
    "pattern_type",
    "severity",
    "metadata",
    "vsm_impact",
    "time_window",
    "frequency",
    "intensity",
    "pattern_vector",
    "subsystem",
    "flow_direction",
    "variety_type",
    "timestamp",
    "extra",
];

fn event_value() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        8 => prop_oneof![
            Just("patterns_indexed"), Just("pattern_matched"), Just("pattern_detected"),
            Just("temporal_pattern_detected"), Just("algedonic_signal"), Just("vsm_pattern_flow")
        ]
        .prop_map(Value::from),
        1 => prop_oneof![Just(json!("nope")), Just(json!(null)), Just(json!(3)), Just(json!("Pattern_Detected"))],
    ];
    let data = prop_oneof![
        8 => vec((proptest::sample::select(FIELDS), field_value()), 0..8)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => field_value(),
    ];
    (kind, data, 0u8..8).prop_map(|(kind, data, shape)| match shape {
        0 => json!({"data": data}),
        1 => json!({"type": kind}),
        2 => json!({"type": kind, "data": data, "extra": 1}),
        _ => json!({"type": kind, "data": data}),
    })
}

fn strategy() -> impl Strategy<Value = EventInput> {
    let seeds = seeds(TARGET);
    let max = prop_oneof![6 => Just(MAX_BATCH), 1 => 0usize..4];
    let value = prop_oneof![
        4 => event_value().boxed(),
        3 => vec(event_value(), 0..5).prop_map(Value::Array).boxed(),
        1 => field_value().boxed(),
    ];
    prop_oneof![
        3 => (mutated(seeds, DICT, 4), max.clone()).prop_map(|(json, max)| EventInput { json, max }).boxed(),
        6 => (value, max).prop_map(|(v, max)| EventInput { json: v.to_string().into_bytes(), max }).boxed(),
    ]
}

#[test]
fn fuzz_events() {
    super::run(TARGET, 7_000, strategy(), property);
}
