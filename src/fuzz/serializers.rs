//! Target `serializers`: the V1 (JSON object) and V2 (JSON array) text
//! decoders of `protocol`, and the reply encoder that echoes what they
//! recovered. Every text frame of every socket goes through them, and their
//! `Malformed` answer decides whether a stranger's garbage earns a reply.
//! Each input is decoded with both serializers. Properties:
//!
//! - the answer is what SPEC §2 says, checked against an independent
//!   reading of the JSON: V1 decodes only an object with string `topic` and
//!   `event`, a `payload`, a `ref` (string, number or null) and an optional
//!   `join_ref` of the same kinds; V2 only an array of exactly those five;
//! - a frame that is not that gives `Malformed`, carrying the topic, ref and
//!   join_ref exactly when each was present with the right JSON type, and
//!   nothing at all when the text is not JSON of the right shape;
//! - a decoded message re-encodes (as a reply, as a push, and as a client
//!   frame decoded again) to JSON that parses, with the same topic and
//!   event, and refs and payload byte for byte: a ref keeps its JSON type
//!   (`1` stays a number, `"1"` a string, `1e400` its text);
//! - a recoverable `Malformed` encodes to an error reply that parses.

use super::mutate::{mutated, seeds};
use super::{ensure, Input, Verdict};
use crate::protocol::{self, Inbound, JsonRef, Malformed, Payload, Vsn};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

const TARGET: &str = "serializers";

/// JSON fragments worth inserting anywhere.
const DICT: &[&[u8]] = &[
    b"\"topic\":",
    b"\"event\":",
    b"\"payload\":",
    b"\"ref\":",
    b"\"join_ref\":",
    b"\"phoenix\"",
    b"\"heartbeat\"",
    b"\"phx_join\"",
    b"\"patterns:stats\"",
    b"null",
    b"1e400",
    b"-0",
    b"123456789012345678901234567890",
    b"\"\\ud800\"",
    b"\"\\ud83d\\ude00\"",
    b"\\u0000",
    b"\\u00e9",
    b"{}",
    b"[]",
    b",",
    b":",
    b"\"",
    b"[[[[[[[[",
    b"\xc3\xa9",
];

#[derive(Clone, Debug)]
pub struct TextInput(String);

impl Input for TextInput {
    fn from_seed(bytes: &[u8]) -> Self {
        TextInput(String::from_utf8_lossy(bytes).into_owned())
    }

    fn to_seed(&self) -> Vec<u8> {
        self.0.clone().into_bytes()
    }
}

/// An object's members in order, duplicates kept, keys unescaped.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What SPEC §2 says a frame decodes to: the fields, or what of them a
/// malformed frame still carries.
#[derive(Debug, PartialEq, Eq)]
struct Fields {
    join_ref: Option<String>,
    reference: Option<String>,
    topic: Option<String>,
    event: Option<String>,
    payload: Option<String>,
}

fn is_ref(raw: &RawValue) -> bool {
    // JSON's grammar: a value starting with `"` is a string, `-` or a
    // digit a number; `null` is null.
    let t = raw.get();
    t.starts_with('"')
        || t.starts_with('-')
        || t.starts_with(|c: char| c.is_ascii_digit())
        || t == "null"
}

fn string(raw: &RawValue) -> Option<String> {
    if raw.get().starts_with('"') {
        serde_json::from_str::<String>(raw.get()).ok()
    } else {
        None
    }
}

fn first_char(text: &str) -> Option<char> {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .chars()
        .next()
}

/// `Ok`: the frame decodes to these fields; `Err`: malformed, with these.
fn expected(vsn: Vsn, text: &str) -> Result<Fields, Fields> {
    let nothing = Fields {
        join_ref: None,
        reference: None,
        topic: None,
        event: None,
        payload: None,
    };
    let raw = |r: &RawValue| r.get().to_owned();
    match vsn {
        Vsn::V1 => {
            if first_char(text) != Some('{') {
                return Err(nothing);
            }
            let Ok(Members(members)) = serde_json::from_str::<Members>(text) else {
                return Err(nothing);
            };
            let known = ["topic", "event", "payload", "ref", "join_ref"];
            let count = |k: &str| members.iter().filter(|(key, _)| key == k).count();
            if known.iter().any(|k| count(k) > 1) {
                // An ambiguous frame: which topic did it mean?
                return Err(nothing);
            }
            let one = |k: &str| members.iter().find(|(key, _)| key == k).map(|(_, v)| &**v);
            let join_ref = one("join_ref");
            let fields = Fields {
                join_ref: join_ref.filter(|r| is_ref(r)).map(raw),
                reference: one("ref").filter(|r| is_ref(r)).map(raw),
                topic: one("topic").and_then(string),
                event: one("event").and_then(string),
                payload: one("payload").map(raw),
            };
            let join_ref_ok = join_ref.is_none_or(is_ref);
            let whole = join_ref_ok
                && fields.reference.is_some()
                && fields.topic.is_some()
                && fields.event.is_some()
                && fields.payload.is_some();
            decoded_if(whole, fields)
        }
        Vsn::V2 => {
            if first_char(text) != Some('[') {
                return Err(nothing);
            }
            let Ok(items) = serde_json::from_str::<Vec<Box<RawValue>>>(text) else {
                return Err(nothing);
            };
            let fields = Fields {
                join_ref: items.first().filter(|r| is_ref(r)).map(|r| raw(r)),
                reference: items.get(1).filter(|r| is_ref(r)).map(|r| raw(r)),
                topic: items.get(2).and_then(|r| string(r)),
                event: items.get(3).and_then(|r| string(r)),
                payload: items.get(4).map(|r| raw(r)),
            };
            let whole = items.len() == 5
                && fields.join_ref.is_some()
                && fields.reference.is_some()
                && fields.topic.is_some()
                && fields.event.is_some();
            decoded_if(whole, fields)
        }
    }
}

/// A whole frame decodes to its fields; any other is malformed, keeping
/// only what a `Malformed` carries (join_ref, ref, topic).
fn decoded_if(whole: bool, fields: Fields) -> Result<Fields, Fields> {
    if whole {
        Ok(fields)
    } else {
        Err(Fields {
            event: None,
            payload: None,
            ..fields
        })
    }
}

fn fields_of(m: &Inbound) -> Fields {
    Fields {
        join_ref: m.join_ref.as_ref().map(|r| r.as_json().to_owned()),
        reference: Some(m.reference.as_json().to_owned()),
        topic: Some(m.topic.clone()),
        event: Some(m.event.clone()),
        payload: match &m.payload {
            Payload::Json(raw) => Some(raw.get().to_owned()),
            Payload::Binary => None,
        },
    }
}

fn fields_of_malformed(m: &Malformed) -> Fields {
    Fields {
        join_ref: m.join_ref.as_ref().map(|r| r.as_json().to_owned()),
        reference: m.reference.as_ref().map(|r| r.as_json().to_owned()),
        topic: m.topic.clone(),
        event: None,
        payload: None,
    }
}

/// A server frame: parses as JSON, and its topic, event and refs are the
/// ones given, byte for byte for the refs.
fn check_server_frame(
    vsn: Vsn,
    frame: &[u8],
    join_ref: Option<&JsonRef>,
    reference: Option<&JsonRef>,
    topic: &str,
    event: &str,
) -> Verdict {
    let text = std::str::from_utf8(frame).map_err(|e| format!("frame is not UTF-8: {e}"))?;
    ensure!(
        serde_json::from_str::<&RawValue>(text).is_ok(),
        "server frame is not JSON: {text}"
    );
    let null = "null";
    let (jr, r, t, e) = match vsn {
        Vsn::V1 => {
            let Members(m) =
                serde_json::from_str(text).map_err(|e| format!("V1 frame {text}: {e}"))?;
            let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
            ensure!(
                keys == ["topic", "event", "payload", "ref"],
                "V1 frame keys {keys:?}: {text}"
            );
            let get = |i: usize| m[i].1.get().to_owned();
            (None, get(3), get(0), get(1))
        }
        Vsn::V2 => {
            let items: Vec<Box<RawValue>> =
                serde_json::from_str(text).map_err(|e| format!("V2 frame {text}: {e}"))?;
            ensure!(
                items.len() == 5,
                "V2 frame of {} items: {text}",
                items.len()
            );
            let get = |i: usize| items[i].get().to_owned();
            (Some(get(0)), get(1), get(2), get(3))
        }
    };
    let string = |raw: &str| serde_json::from_str::<String>(raw).ok();
    if let Some(jr) = jr {
        ensure!(
            jr == join_ref.map_or(null, JsonRef::as_json),
            "join_ref {jr} in {text}"
        );
    }
    ensure!(
        r == reference.map_or(null, JsonRef::as_json),
        "ref {r} in {text}"
    );
    ensure!(string(&t).as_deref() == Some(topic), "topic in {text}");
    ensure!(string(&e).as_deref() == Some(event), "event in {text}");
    Ok(())
}

/// The client frame that carries `m`, as a phoenix client would write it.
fn client_frame(vsn: Vsn, m: &Inbound) -> String {
    let payload = match &m.payload {
        Payload::Json(raw) => raw.get(),
        Payload::Binary => "null",
    };
    let topic = protocol::json_string(&m.topic);
    let event = protocol::json_string(&m.event);
    let r = m.reference.as_json();
    match vsn {
        Vsn::V1 => {
            let jr = m
                .join_ref
                .as_ref()
                .map(|j| format!(",\"join_ref\":{}", j.as_json()))
                .unwrap_or_default();
            format!("{{\"topic\":{topic},\"event\":{event},\"payload\":{payload},\"ref\":{r}{jr}}}")
        }
        Vsn::V2 => {
            let jr = m.join_ref.as_ref().map_or("null", JsonRef::as_json);
            format!("[{jr},{r},{topic},{event},{payload}]")
        }
    }
}

fn check(vsn: Vsn, text: &str) -> Verdict {
    let got = protocol::decode_text(vsn, text);
    let want = expected(vsn, text);
    match (&got, &want) {
        (Ok(m), Ok(w)) => ensure!(
            fields_of(m) == *w,
            "{vsn:?} decoded {:?}, SPEC says {w:?}",
            fields_of(m)
        ),
        (Err(m), Err(w)) => ensure!(
            fields_of_malformed(m) == *w,
            "{vsn:?} malformed with {:?}, SPEC says {w:?}",
            fields_of_malformed(m)
        ),
        (Ok(m), Err(w)) => {
            return Err(format!(
                "{vsn:?} decoded {:?}, SPEC says malformed with {w:?}",
                fields_of(m)
            ))
        }
        (Err(m), Ok(w)) => {
            return Err(format!(
                "{vsn:?} malformed with {:?}, SPEC says it decodes to {w:?}",
                fields_of_malformed(m)
            ))
        }
    }
    super::note(
        TARGET,
        match (&got, vsn) {
            (Ok(_), Vsn::V1) => "V1 decoded",
            (Ok(_), Vsn::V2) => "V2 decoded",
            (Err(m), _) if m.topic.is_some() && m.reference.is_some() => "malformed, replied to",
            (Err(_), _) => "malformed, dropped",
        },
    );
    match got {
        Ok(m) => {
            let jr = m.join_ref.as_ref();
            let reply = protocol::encode_reply(vsn, jr, &m.reference, &m.topic, true, "{}");
            check_server_frame(vsn, &reply, jr, Some(&m.reference), &m.topic, "phx_reply")?;
            if let Payload::Json(raw) = &m.payload {
                let push = protocol::encode(vsn, jr, None, &m.topic, &m.event, raw.get());
                check_server_frame(vsn, &push, jr, None, &m.topic, &m.event)?;
            }
            let again = client_frame(vsn, &m);
            match protocol::decode_text(vsn, &again) {
                Ok(m2) => ensure!(
                    fields_of(&m2) == fields_of(&m),
                    "re-encoded as {again}, decoded as {:?}",
                    fields_of(&m2)
                ),
                Err(e) => return Err(format!("re-encoded as {again}, malformed: {e:?}")),
            }
        }
        Err(bad) => {
            if let (Some(topic), Some(reference)) = (&bad.topic, &bad.reference) {
                let body = protocol::reason("malformed message");
                let jr = bad.join_ref.as_ref();
                let reply = protocol::encode_reply(vsn, jr, reference, topic, false, &body);
                check_server_frame(vsn, &reply, jr, Some(reference), topic, "phx_reply")?;
            }
        }
    }
    Ok(())
}

fn property(input: &TextInput) -> Verdict {
    check(Vsn::V1, &input.0)?;
    check(Vsn::V2, &input.0)
}

/// JSON-ish value text: mostly valid, with the edges of strings, numbers
/// and nesting, sometimes invalid.
fn value() -> BoxedStrategy<String> {
    let string = prop_oneof![
        "[a-z:_]{0,12}".prop_map(|s| format!("\"{s}\"")),
        vec(any::<char>(), 0..6)
            .prop_map(|c| protocol::json_string(&c.into_iter().collect::<String>())),
        Just(r#""\u00e9\u0000\n\"\\""#.to_owned()),
        Just(r#""\ud83d\ude00""#.to_owned()),
        Just(r#""\ud800""#.to_owned()),
        Just(r#""\udc00\ud800""#.to_owned()),
    ];
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            f.to_string()
        } else {
            "1e400".into()
        }),
        Just("-0".to_owned()),
        Just("1e400".to_owned()),
        Just("-1E-400".to_owned()),
        Just("123456789012345678901234567890".to_owned()),
        Just("0.5e+3".to_owned()),
    ];
    let scalar = prop_oneof![
        3 => string,
        3 => number,
        1 => Just("null".to_owned()),
        1 => Just("true".to_owned()),
        1 => Just("false".to_owned()),
        1 => (1usize..200, any::<bool>()).prop_map(|(depth, array)| {
            if array {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth))
            } else {
                format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
            }
        }),
    ];
    let valid = scalar.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            vec(("[a-z]{0,4}", inner), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    });
    let invalid = prop_oneof![
        Just("\"tab\there\"".to_owned()),
        Just("\"unterminated".to_owned()),
        Just(r#""bad \x escape""#.to_owned()),
        Just("01".to_owned()),
        Just("-".to_owned()),
        Just("1.".to_owned()),
        Just("nul".to_owned()),
        Just("[1,]".to_owned()),
        Just("{\"a\"}".to_owned()),
        (129usize..400).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
    ];
    prop_oneof![12 => valid, 1 => invalid].boxed()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop_oneof![
            Just("topic"), Just("event"), Just("payload"), Just("ref"), Just("join_ref")
        ]
        .prop_map(|k| format!("\"{k}\"")),
        1 => Just(r#""to\u0070ic""#.to_owned()),
        1 => Just(r#""re\u0066""#.to_owned()),
        1 => Just(r#""\ud800""#.to_owned()),
        1 => "[a-z_]{0,6}".prop_map(|k| format!("\"{k}\"")),
    ]
}

/// A ref: mostly a string, number or null, sometimes not.
fn reference() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[0-9]{1,4}".prop_map(|s| format!("\"{s}\"")),
        2 => any::<u32>().prop_map(|n| n.to_string()),
        1 => Just("null".to_owned()),
        3 => value(),
    ]
    .boxed()
}

/// A topic or event: mostly a string.
fn name() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop_oneof![
            Just("patterns:stats"), Just("phoenix"), Just("rooms:a"), Just("heartbeat"),
            Just("phx_join"), Just("phx_leave"), Just("get_local_stats")
        ]
        .prop_map(|s| format!("\"{s}\"")),
        3 => vec(any::<char>(), 0..6).prop_map(|c| protocol::json_string(&c.into_iter().collect::<String>())),
        2 => value(),
    ]
    .boxed()
}

fn frame() -> BoxedStrategy<String> {
    let ws = prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\n\t ")];
    // The members of a V1 frame in any order; now and then one left out
    // or doubled.
    let change = || prop_oneof![8 => Just(None), 1 => (0usize..5).prop_map(Some)];
    let v1 = (
        (reference(), reference(), name(), name(), value()),
        (any::<bool>(), change(), change()),
        Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
        ws.clone(),
    )
        .prop_map(
            |((jr, r, t, e, p), (with_join_ref, drop, double), shuffle, ws)| {
                let mut order: Vec<usize> = if with_join_ref {
                    vec![0, 1, 2, 3, 4]
                } else {
                    vec![1, 2, 3, 4]
                };
                if let Some(d) = drop {
                    order.retain(|i| *i != d);
                }
                order.extend(double);
                // A permutation from the seed (Fisher-Yates on a small LCG).
                let mut state = shuffle;
                for i in (1..order.len()).rev() {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    order.swap(i, (state >> 33) as usize % (i + 1));
                }
                let members: Vec<String> = order
                    .into_iter()
                    .map(|i| match i {
                        0 => format!("\"join_ref\":{ws}{jr}"),
                        1 => format!("\"ref\":{r}"),
                        2 => format!("\"topic\":{t}"),
                        3 => format!("\"event\":{ws}{e}"),
                        _ => format!("\"payload\":{p}"),
                    })
                    .collect();
                format!("{ws}{{{}}}", members.join(","))
            },
        );
    let v2 = (
        reference(),
        reference(),
        name(),
        name(),
        value(),
        0u8..8,
        ws.clone(),
    )
        .prop_map(|(jr, r, t, e, p, arity, ws)| {
            let mut items = vec![jr, r, t, e, p];
            match arity {
                0 => items.truncate(4),
                1 => items.push("6".into()),
                _ => {}
            }
            format!("[{ws}{}]", items.join(&format!(",{ws}")))
        });
    let object = (vec((key(), value()), 0..7), ws.clone()).prop_map(|(members, ws)| {
        let body: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("{ws}{k}{ws}:{ws}{v}"))
            .collect();
        format!("{ws}{{{}}}{ws}", body.join(","))
    });
    let array =
        (vec(value(), 0..8), ws).prop_map(|(items, ws)| format!("{ws}[{}]{ws}", items.join(",")));
    prop_oneof![2 => object.boxed(), 3 => v1.boxed(), 3 => v2.boxed(), 1 => array.boxed()].boxed()
}

fn strategy() -> impl Strategy<Value = TextInput> {
    let seeds = seeds(TARGET);
    let alphabet: Vec<char> = "{}[]\",:0123456789-+.eE \\utopicrfnl\u{e9}"
        .chars()
        .collect();
    prop_oneof![
        4 => mutated(seeds, DICT, 6).prop_map(|b| TextInput::from_seed(&b)).boxed(),
        5 => frame().prop_map(TextInput).boxed(),
        2 => super::mutate::mutate_generated(frame().prop_map(String::into_bytes), DICT, 3)
            .prop_map(|b| TextInput::from_seed(&b)).boxed(),
        1 => vec(proptest::sample::select(alphabet), 0..48)
            .prop_map(|c| TextInput(c.into_iter().collect())).boxed(),
    ]
}

#[test]
fn fuzz_serializers() {
    super::run(TARGET, 10_000, strategy(), property);
}
