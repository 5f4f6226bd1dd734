//! One presence entry (SPEC §9.1): who (KEY) and the META phoenix.js lists
//! under that key. Every node holds every meta of the cluster, so a meta is
//! kept small: its parts (the ref as two numbers, the node as a number),
//! rendered when sent, whether it is this node's or came from another.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest join param `meta`, serialised.
pub const MAX_META_BYTES: usize = 1024;

/// What a join's params and socket say about its presence.
#[derive(Debug)]
pub struct Joining {
    pub key: Arc<str>,
    pub info: Option<Arc<RawValue>>,
    pub meta: Option<Box<RawValue>>,
}

/// Why a join's presence params were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaTooLarge;

/// The KEY and extras of a join: the token's `sub`, else the join param
/// `user_id` (a string, taken as given), else `anon:<socket id>`; the
/// token's `info`; the join param `meta` (an object of at most 1 KiB).
pub fn joining(
    sub: Option<&str>,
    info: Option<&RawValue>,
    params: &Map<String, Value>,
    socket: u64,
) -> Result<Joining, MetaTooLarge> {
    let key: Arc<str> = match (sub, params.get("user_id")) {
        (Some(sub), _) => Arc::from(sub),
        (None, Some(Value::String(id))) => Arc::from(id.as_str()),
        (None, _) => Arc::from(format!("anon:{socket}").as_str()),
    };
    let meta = match params.get("meta") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => {
            let text = m.to_string();
            if text.len() > MAX_META_BYTES {
                return Err(MetaTooLarge);
            }
            Some(RawValue::from_string(text).map_err(|_| MetaTooLarge)?)
        }
        Some(_) => return Err(MetaTooLarge),
    };
    let info = info.and_then(|i| {
        RawValue::from_string(i.get().to_owned())
            .ok()
            .map(Arc::from)
    });
    Ok(Joining { key, info, meta })
}

/// A `phx_ref`: every headcount writes its refs as `<prefix>.<counter>`,
/// both lower-case hex without leading zeros, and they are kept as the two
/// numbers (16 bytes, no allocation: one is held per meta on every node).
/// Text in any other form is not a ref of this cluster (`parse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ref {
    prefix: u64,
    n: u64,
}

impl Ref {
    /// The ref `text` names, if it is written as a headcount writes refs.
    pub fn parse(text: &str) -> Option<Ref> {
        fn hex(s: &str) -> Option<u64> {
            let canonical = !s.is_empty()
                && s.len() <= 16
                && !(s.len() > 1 && s.starts_with('0'))
                && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            canonical.then(|| u64::from_str_radix(s, 16).ok()).flatten()
        }
        let (prefix, n) = text.split_once('.')?;
        Some(Ref {
            prefix: hex(prefix)?,
            n: hex(n)?,
        })
    }

    pub fn to_arc(self) -> Arc<str> {
        Arc::from(self.to_string().as_str())
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{:x}", self.prefix, self.n)
    }
}

impl Serialize for Ref {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `phx_ref`s unique in the cluster: a per-process prefix and a counter.
pub struct Refs {
    prefix: u64,
    next: AtomicU64,
}

impl Refs {
    pub fn new(origin: &str) -> Refs {
        // The origin names this process uniquely; a short hash of it keeps
        // refs small.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in origin.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        Refs {
            prefix: h & 0xffff_ffff_ffff,
            next: AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> Ref {
        Ref {
            prefix: self.prefix,
            n: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The node number of this node's metas.
pub const LOCAL: u16 = 0;

/// The largest `online_at` a meta keeps in its parts (48 bits of
/// milliseconds: the year 10889).
const MAX_ONLINE_AT: u64 = (1 << 48) - 1;

/// A META as it is kept, this node's or another's: its parts, rendered
/// when sent, so that a meta costs the same wherever it is held (32 bytes,
/// and the KEY it shares with the topic's other metas). What most metas
/// lack (`info`, `meta`) is boxed apart.
pub struct Meta {
    pub key: Arc<str>,
    /// `online_at << 16 | node`: the node `LOCAL`, or the number of the
    /// node it came from.
    at_node: u64,
    extra: Option<Box<Extra>>,
}

struct Extra {
    info: Option<Arc<RawValue>>,
    meta: Option<Box<RawValue>>,
    /// Another node's META that did not read as the fields of §9.1, sent
    /// on as it came.
    raw: Option<Box<RawValue>>,
}

/// Another node's META, as it renders them (`Rendered`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming<'a> {
    // Read for the shape only: the parts are checked by rendering them back.
    #[serde(borrow, rename = "phx_ref")]
    _phx_ref: Cow<'a, str>,
    #[serde(borrow, rename = "node")]
    _node: Cow<'a, str>,
    online_at: u64,
    info: Option<Box<RawValue>>,
    meta: Option<Box<RawValue>>,
}

impl Meta {
    pub fn local(joining: Joining) -> Meta {
        let extra = (joining.info.is_some() || joining.meta.is_some()).then(|| {
            Box::new(Extra {
                info: joining.info,
                meta: joining.meta,
                raw: None,
            })
        });
        Meta {
            key: joining.key,
            at_node: (unix_ms().min(MAX_ONLINE_AT) << 16) | u64::from(LOCAL),
            extra,
        }
    }

    /// Node `id`'s META `json` for `phx_ref`, read into its parts when they
    /// render back to exactly `json` (what `name` renders); else kept as it
    /// came.
    pub fn remote(key: Arc<str>, phx_ref: Ref, json: Box<RawValue>, name: &str, id: u16) -> Meta {
        let parts = serde_json::from_str::<Incoming>(json.get())
            .ok()
            .filter(|m| m.online_at <= MAX_ONLINE_AT);
        if let Some(Incoming {
            online_at,
            info,
            meta,
            ..
        }) = parts
        {
            let extra = (info.is_some() || meta.is_some()).then(|| {
                Box::new(Extra {
                    info: info.map(Arc::from),
                    meta,
                    raw: None,
                })
            });
            let parted = Meta {
                key: key.clone(),
                at_node: (online_at << 16) | u64::from(id),
                extra,
            };
            // The same text, so every node shows a member the same META.
            if crate::stats::to_json(&parted.out(&phx_ref, name)) == json.get() {
                return parted;
            }
        }
        Meta {
            key,
            at_node: u64::from(id),
            extra: Some(Box::new(Extra {
                info: None,
                meta: None,
                raw: Some(json),
            })),
        }
    }

    /// The node it is on: `LOCAL`, or another's number.
    pub fn node(&self) -> u16 {
        self.at_node as u16
    }

    /// The META for `phx_ref`, `node` naming the node it is on.
    pub fn out<'a>(&'a self, phx_ref: &'a Ref, node: &'a str) -> Out<'a> {
        let extra = self.extra.as_deref();
        if let Some(raw) = extra.and_then(|e| e.raw.as_deref()) {
            return Out::Raw(raw);
        }
        Out::Parts(Rendered {
            phx_ref,
            node,
            online_at: self.at_node >> 16,
            info: extra.and_then(|e| e.info.as_deref()),
            meta: extra.and_then(|e| e.meta.as_deref()),
        })
    }
}

#[derive(Serialize)]
pub struct Rendered<'a> {
    phx_ref: &'a Ref,
    node: &'a str,
    online_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a RawValue>,
}

/// A META as phoenix.js receives it.
pub enum Out<'a> {
    Parts(Rendered<'a>),
    Raw(&'a RawValue),
}

impl Serialize for Out<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Out::Parts(r) => r.serialize(s),
            Out::Raw(r) => r.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn the_key_is_the_sub_then_user_id_then_anonymous() {
        let p = params(json!({"user_id": "bob"}));
        assert_eq!(&*joining(Some("alice"), None, &p, 7).unwrap().key, "alice");
        assert_eq!(&*joining(None, None, &p, 7).unwrap().key, "bob");
        let p = params(json!({"user_id": 5}));
        assert_eq!(&*joining(None, None, &p, 7).unwrap().key, "anon:7");
    }

    #[test]
    fn meta_is_an_object_of_at_most_a_kibibyte() {
        let ok = params(json!({"meta": {"status": "away"}}));
        let j = joining(None, None, &ok, 1).unwrap();
        assert_eq!(j.meta.unwrap().get(), r#"{"status":"away"}"#);
        let big = params(json!({"meta": {"x": "a".repeat(1100)}}));
        assert_eq!(joining(None, None, &big, 1).err(), Some(MetaTooLarge));
        let not_object = params(json!({"meta": "x"}));
        assert_eq!(
            joining(None, None, &not_object, 1).err(),
            Some(MetaTooLarge)
        );
    }

    #[test]
    fn refs_are_unique_and_local_metas_render_with_the_node() {
        let refs = Refs::new("a/1");
        let (r1, r2) = (refs.next(), refs.next());
        assert_ne!(r1, r2);
        assert_ne!(Refs::new("a/2").next(), r1, "another process");
        let info = Some(Arc::from(
            RawValue::from_string(r#"{"n":1}"#.into()).unwrap(),
        ));
        let before = unix_ms();
        let meta = Meta::local(Joining {
            key: Arc::from("k"),
            info,
            meta: None,
        });
        assert_eq!(meta.node(), LOCAL);
        let v: Value = serde_json::to_value(meta.out(&r1, "a@h")).unwrap();
        assert!(v["online_at"].as_u64().unwrap() >= before);
        assert_eq!(
            v,
            json!({"phx_ref": r1.to_string(), "node": "a@h", "online_at": v["online_at"], "info": {"n": 1}})
        );
    }

    #[test]
    fn refs_read_back_only_when_written_as_headcount_writes_them() {
        let r = Refs::new("a/1").next();
        assert_eq!(Ref::parse(&r.to_string()), Some(r));
        assert_eq!(
            Ref::parse("1f.2a").map(|r| r.to_string()).as_deref(),
            Some("1f.2a")
        );
        for other in [
            "b1",
            "0a.1",
            "a.01",
            "A.1",
            "a.",
            ".1",
            "a.1.2",
            "1a2b3c4d5e6f7a8b9.1",
            "",
        ] {
            assert_eq!(Ref::parse(other), None, "{other}");
        }
        assert_ne!(Ref::parse("a.1"), Ref::parse("a.2"));
    }

    #[test]
    fn another_nodes_meta_renders_as_it_came() {
        let r = Ref::parse("1f.2a").unwrap();
        // As a headcount renders them (`Rendered`): kept as parts.
        for came in [
            r#"{"phx_ref":"1f.2a","node":"b@h","online_at":1764480000123,"info":{"n":1},"meta":{"s":"x"}}"#,
            r#"{"phx_ref":"1f.2a","node":"b@h","online_at":7,"meta":{"s":"x"}}"#,
            r#"{"phx_ref":"1f.2a","node":"b@h","online_at":7}"#,
        ] {
            let raw = RawValue::from_string(came.to_owned()).unwrap();
            let meta = Meta::remote(Arc::from("k"), r, raw, "b@h", 3);
            assert!(
                meta.extra.as_ref().is_none_or(|e| e.raw.is_none()),
                "{came}"
            );
            assert_eq!(meta.node(), 3);
            assert_eq!(crate::stats::to_json(&meta.out(&r, "b@h")), came);
        }
        // Not what a headcount renders (another field, another node's
        // name, another ref, a time past 48 bits, a null, another order or
        // spacing): sent on as it came, to the byte.
        let texts = [
            json!({"phx_ref": "1f.2a", "node": "b@h", "online_at": 7, "x": 1}).to_string(),
            json!({"phx_ref": "1f.2a", "node": "c@h", "online_at": 7}).to_string(),
            json!({"phx_ref": "1f.2b", "node": "b@h", "online_at": 7}).to_string(),
            json!({"phx_ref": "1f.2a", "node": "b@h", "online_at": 1u64 << 50}).to_string(),
            r#"{"phx_ref":"1f.2a","node":"b@h","online_at":7,"info":null}"#.to_owned(),
            r#"{"node":"b@h","phx_ref":"1f.2a","online_at":7}"#.to_owned(),
            r#"{"phx_ref": "1f.2a","node":"b@h","online_at":7}"#.to_owned(),
        ];
        for odd in texts {
            let raw = RawValue::from_string(odd.clone()).unwrap();
            let meta = Meta::remote(Arc::from("k"), r, raw, "b@h", 3);
            assert_eq!(meta.node(), 3);
            assert_eq!(crate::stats::to_json(&meta.out(&r, "b@h")), odd);
        }
    }

    #[test]
    fn a_meta_is_small() {
        // Held once per member on every node (issue 12's budget).
        assert_eq!(std::mem::size_of::<Ref>(), 16);
        assert_eq!(std::mem::size_of::<Meta>(), 32);
    }
}
