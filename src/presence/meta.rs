//! One presence entry (SPEC §9.1): who (KEY) and the META phoenix.js lists
//! under that key. A local meta keeps its parts and is rendered when sent;
//! a remote one is kept as the JSON its node rendered.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
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

/// A `phx_ref` unique in the cluster: a per-process prefix and a counter.
pub struct Refs {
    prefix: String,
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
            prefix: format!("{:x}", h & 0xffff_ffff_ffff),
            next: AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}.{n:x}", self.prefix).as_str())
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A META as it is kept.
pub enum Body {
    /// This node's: rendered when sent.
    Local {
        online_at: u64,
        info: Option<Arc<RawValue>>,
        meta: Option<Box<RawValue>>,
    },
    /// Another node's, as that node rendered it.
    Remote { node: u16, json: Box<RawValue> },
}

#[derive(Serialize)]
pub struct Rendered<'a> {
    phx_ref: &'a str,
    node: &'a str,
    online_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a RawValue>,
}

/// A META as phoenix.js receives it.
pub enum Out<'a> {
    Local(Rendered<'a>),
    Raw(&'a RawValue),
}

impl Serialize for Out<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Out::Local(r) => r.serialize(s),
            Out::Raw(r) => r.serialize(s),
        }
    }
}

impl Body {
    /// The META for `phx_ref`, with `node` naming this node.
    pub fn out<'a>(&'a self, phx_ref: &'a str, node: &'a str) -> Out<'a> {
        match self {
            Body::Local {
                online_at,
                info,
                meta,
            } => Out::Local(Rendered {
                phx_ref,
                node,
                online_at: *online_at,
                info: info.as_deref(),
                meta: meta.as_deref(),
            }),
            Body::Remote { json, .. } => Out::Raw(json),
        }
    }

    pub fn remote_node(&self) -> Option<u16> {
        match self {
            Body::Local { .. } => None,
            Body::Remote { node, .. } => Some(*node),
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
        let body = Body::Local {
            online_at: 5,
            info: Some(Arc::from(
                RawValue::from_string(r#"{"n":1}"#.into()).unwrap(),
            )),
            meta: None,
        };
        let v: Value = serde_json::to_value(body.out(&r1, "a@h")).unwrap();
        assert_eq!(
            v,
            json!({"phx_ref": &*r1, "node": "a@h", "online_at": 5, "info": {"n": 1}})
        );
    }
}
