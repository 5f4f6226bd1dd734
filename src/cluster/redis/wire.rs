//! What nodes tell each other on the view channel: each write batch of a
//! node as a delta (its totals and the topics that changed, absolute counts,
//! numbered in sequence per process), or a goodbye. JSON, read back with
//! bounds: anything on a Redis channel may come from any client.

use crate::cluster::view::{Delta, Totals};
use crate::presence::Outgoing;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Largest view message accepted: a full delta of a node with 100,000
/// topics is a few MB.
pub const MAX_VIEW_MESSAGE: usize = 64 << 20;

#[derive(Serialize)]
struct Message<'a> {
    node: &'a str,
    origin: &'a str,
    seq: u64,
    full: bool,
    bye: bool,
    c: u64,
    s: u64,
    k: u64,
    topics: Vec<(&'a str, u64)>,
    /// Presence: `[topic, phx_ref, KEY, META]`, KEY and META null for a
    /// leave.
    p: Vec<(&'a str, &'a str, Option<&'a str>, Option<&'a RawValue>)>,
}

/// The same, as read: owned, since names may carry escapes.
#[derive(Deserialize)]
struct Incoming {
    node: String,
    origin: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    full: bool,
    #[serde(default)]
    bye: bool,
    #[serde(default)]
    c: u64,
    #[serde(default)]
    s: u64,
    #[serde(default)]
    k: u64,
    #[serde(default)]
    topics: Vec<(String, u64)>,
    #[serde(default)]
    p: Vec<PresenceEntry>,
}

/// `[topic, phx_ref, KEY, META]` as read (KEY and META null for a leave).
pub type PresenceEntry = (String, String, Option<String>, Option<Box<RawValue>>);

/// A message from the view channel.
#[derive(Debug, PartialEq)]
pub enum Received {
    Delta(Delta),
    Goodbye { node: String, origin: String },
}

/// A delta as it is published.
pub fn delta(delta: &Delta) -> String {
    crate::stats::to_json(&Message {
        node: &delta.node,
        origin: &delta.origin,
        seq: delta.seq,
        full: delta.full,
        bye: false,
        c: delta.totals.connections,
        s: delta.totals.stream,
        k: delta.totals.sockets,
        topics: delta.topics.iter().map(|(t, n)| (t.as_str(), *n)).collect(),
        p: delta
            .presence
            .iter()
            .map(|o| {
                let (key, meta) = match &o.join {
                    Some((k, m)) => (Some(&**k), Some(&**m)),
                    None => (None, None),
                };
                (&*o.topic, &*o.phx_ref, key, meta)
            })
            .collect(),
    })
}

/// A node's goodbye (graceful shutdown).
pub fn goodbye(node: &str, origin: &str) -> String {
    crate::stats::to_json(&Message {
        node,
        origin,
        seq: 0,
        full: false,
        bye: true,
        c: 0,
        s: 0,
        k: 0,
        topics: Vec::new(),
        p: Vec::new(),
    })
}

/// Reads a view message; the error says what is wrong with it.
pub fn read(body: &[u8]) -> Result<Received, String> {
    if body.len() > MAX_VIEW_MESSAGE {
        return Err(format!("view message of {} bytes", body.len()));
    }
    let m: Incoming =
        serde_json::from_slice(body).map_err(|e| format!("invalid view message: {e}"))?;
    if m.node.is_empty() {
        return Err("view message without a node".into());
    }
    if m.bye {
        return Ok(Received::Goodbye {
            node: m.node,
            origin: m.origin,
        });
    }
    Ok(Received::Delta(Delta {
        node: m.node,
        origin: m.origin,
        seq: m.seq,
        full: m.full,
        totals: Totals {
            connections: m.c,
            stream: m.s,
            sockets: m.k,
        },
        topics: m.topics,
        presence: m
            .p
            .into_iter()
            .map(presence_change)
            .collect::<Result<_, _>>()?,
    }))
}

/// One presence entry as read: a join needs a KEY and an object META.
pub fn presence_change((topic, phx_ref, key, meta): PresenceEntry) -> Result<Outgoing, String> {
    let join = match (key, meta) {
        (Some(k), Some(m)) if m.get().starts_with('{') => Some((Arc::from(k.as_str()), m)),
        (None, None) => None,
        _ => return Err(format!("bad presence entry for {phx_ref:?}")),
    };
    Ok(Outgoing {
        topic: Arc::from(topic.as_str()),
        phx_ref: Arc::from(phx_ref.as_str()),
        join,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_and_goodbyes_read_back() {
        let d = Delta {
            node: "a".into(),
            origin: "a/1".into(),
            seq: 7,
            full: false,
            totals: Totals {
                connections: 3,
                stream: 1,
                sockets: 2,
            },
            topics: vec![("x".into(), 2), ("gone".into(), 0)],
            presence: vec![
                Outgoing {
                    topic: Arc::from("x"),
                    phx_ref: Arc::from("r1"),
                    join: Some((
                        Arc::from("alice"),
                        RawValue::from_string(r#"{"phx_ref":"r1"}"#.into()).unwrap(),
                    )),
                },
                Outgoing {
                    topic: Arc::from("x"),
                    phx_ref: Arc::from("r0"),
                    join: None,
                },
            ],
        };
        let Ok(Received::Delta(back)) = read(delta(&d).as_bytes()) else {
            panic!("a delta reads back");
        };
        assert_eq!(
            (
                &back.node,
                &back.origin,
                back.seq,
                back.full,
                back.totals,
                &back.topics
            ),
            (&d.node, &d.origin, d.seq, d.full, d.totals, &d.topics)
        );
        assert_eq!(back.presence.len(), 2);
        assert_eq!(&*back.presence[0].join.as_ref().unwrap().0, "alice");
        assert!(back.presence[1].join.is_none());
        assert!(read(br#"{"node":"a","origin":"x","p":[["t","r","k",5]]}"#).is_err());
        assert_eq!(
            read(goodbye("a", "a/1").as_bytes()),
            Ok(Received::Goodbye {
                node: "a".into(),
                origin: "a/1".into()
            })
        );
        assert!(read(b"{}").is_err());
        assert!(read(br#"{"node":"","origin":"x"}"#).is_err());
        assert!(read(br#"{"node":"a","origin":"x","topics":[["t",-1]]}"#).is_err());
        assert!(read(b"not json").is_err());
    }
}
