//! What a cluster read returns, parsed from the read script's reply, and the
//! ClusterStats of SPEC §3.2 built from it. The answering node always puts
//! its own live figures in place of what Redis holds for it, so its entry is
//! exact even while its last write is on the way.

use crate::stats::{self, ClusterStats, NodeEntry, Reporter};
use ::redis::Value;
use std::collections::BTreeMap;

/// One node's figures as Redis holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFigures {
    pub name: String,
    pub connection_count: u64,
    pub stream_count: u64,
    pub socket_count: u64,
    /// Write time, ms on Redis's clock.
    pub written_at: i64,
    pub topics: Vec<(String, u64)>,
}

/// Every live node, as of `now` (ms on Redis's clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRead {
    pub now: i64,
    pub nodes: Vec<NodeFigures>,
}

/// Live nodes and the oldest write, from the census mode of the script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Census {
    pub live: u64,
    pub oldest_age_ms: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from redis: {0}")]
pub struct BadReply(&'static str);

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn count(v: &Value) -> Option<u64> {
    int(v).and_then(|n| u64::try_from(n).ok())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

impl ClusterRead {
    /// Parses the `full` mode reply of `keys::READ`.
    pub fn parse(reply: &Value) -> Result<ClusterRead, BadReply> {
        let items = array(reply).ok_or(BadReply("not an array"))?;
        let (first, rest) = items.split_first().ok_or(BadReply("empty"))?;
        let now = int(first).ok_or(BadReply("no time"))?;
        let mut nodes = Vec::with_capacity(rest.len());
        for node in rest {
            let f = array(node).ok_or(BadReply("node is not an array"))?;
            let [name, c, s, k, at, topics] = f else {
                return Err(BadReply("node has the wrong arity"));
            };
            let flat = array(topics).ok_or(BadReply("topics are not an array"))?;
            let mut topics = Vec::with_capacity(flat.len() / 2);
            for pair in flat.chunks(2) {
                if let [topic, n] = pair {
                    let topic = text(topic).ok_or(BadReply("topic is not text"))?;
                    let n = count(n).ok_or(BadReply("topic count is not a count"))?;
                    if n > 0 {
                        topics.push((topic, n));
                    }
                }
            }
            nodes.push(NodeFigures {
                name: text(name).ok_or(BadReply("node name is not text"))?,
                connection_count: count(c).ok_or(BadReply("bad connection count"))?,
                stream_count: count(s).ok_or(BadReply("bad stream count"))?,
                socket_count: count(k).ok_or(BadReply("bad socket count"))?,
                written_at: int(at).ok_or(BadReply("bad write time"))?,
                topics,
            });
        }
        Ok(ClusterRead { now, nodes })
    }
}

impl Census {
    /// Parses the `census` mode reply of `keys::READ`.
    pub fn parse(reply: &Value) -> Result<Census, BadReply> {
        match array(reply) {
            Some([now, live, oldest]) => {
                let now = int(now).ok_or(BadReply("no time"))?;
                let oldest = int(oldest).ok_or(BadReply("no oldest"))?;
                Ok(Census {
                    live: count(live).ok_or(BadReply("no live count"))?,
                    oldest_age_ms: u64::try_from(now - oldest).unwrap_or(0),
                })
            }
            _ => Err(BadReply("census has the wrong shape")),
        }
    }
}

/// ClusterStats from a read, with this node's own figures taken live from
/// its tally. Also returns the census of the answer (for the metrics).
pub fn cluster_json(reporter: &Reporter, read: &ClusterRead) -> (String, Census) {
    let me = reporter.node();
    let local = reporter.figures();
    let mut by_topic: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    let (mut c, mut s, mut k) = (0, 0, 0);
    let mut oldest = 0;
    for n in read.nodes.iter().filter(|n| n.name != me) {
        for (topic, count) in &n.topics {
            by_topic
                .entry(topic.as_str())
                .or_default()
                .insert(n.name.as_str(), *count);
        }
        let age_ms = u64::try_from(read.now - n.written_at).unwrap_or(0);
        oldest = oldest.max(age_ms);
        c += n.connection_count;
        s += n.stream_count;
        k += n.socket_count;
        nodes.insert(
            n.name.as_str(),
            NodeEntry {
                connection_count: n.connection_count,
                stream_count: n.stream_count,
                socket_count: n.socket_count,
                age_ms,
            },
        );
    }
    let mine = NodeEntry {
        connection_count: local.connection_count,
        stream_count: local.stream_count,
        socket_count: local.socket_count,
        age_ms: 0,
    };
    for (topic, count) in &local.listing.topics {
        by_topic.entry(topic).or_default().insert(me, *count);
    }
    c += mine.connection_count;
    s += mine.stream_count;
    k += mine.socket_count;
    nodes.insert(me, mine);
    let census = Census {
        live: nodes.len() as u64,
        oldest_age_ms: oldest,
    };
    let by_topic = stats::raw(stats::to_json(&by_topic));
    let answer = ClusterStats {
        connection_count: c,
        stream_count: s,
        socket_count: k,
        connections_by_topic: &by_topic,
        cluster_size: nodes.len(),
        nodes,
        total_connections: c,
        source: "cluster",
        degraded: false,
        error: None,
        node: me,
        timestamp: stats::timestamp(),
    };
    (stats::to_json(&answer), census)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn merges_other_nodes_with_live_local_figures() {
        let registry = crate::registry::Registry::new("a", 100, false);
        let reporter = Reporter::new(registry.clone());
        let slot = registry.try_open_socket(10).unwrap();
        let member = || crate::registry::Member {
            outbox: std::sync::Arc::new(crate::outbox::Outbox::new(8)),
            vsn: crate::protocol::Vsn::V2,
            tag: crate::registry::Tag::Plain,
            occupancy: false,
        };
        let _m1 = registry
            .join("patterns:stream", slot.id(), member())
            .unwrap();
        let _m2 = registry.join("rooms:x", slot.id(), member()).unwrap();
        let reply = Value::Array(vec![
            Value::Int(10_000),
            Value::Array(vec![
                bulk("b"),
                bulk("3"),
                bulk("2"),
                bulk("2"),
                bulk("9960"),
                Value::Array(vec![
                    bulk("patterns:stream"),
                    bulk("2"),
                    bulk("rooms:y"),
                    bulk("1"),
                ]),
            ]),
            // Redis's stale copy of the answering node is ignored.
            Value::Array(vec![
                bulk("a"),
                bulk("99"),
                bulk("99"),
                bulk("99"),
                bulk("1"),
                Value::Array(vec![bulk("patterns:stream"), bulk("99")]),
            ]),
        ]);
        let read = ClusterRead::parse(&reply).unwrap();
        let (json, census) = cluster_json(&reporter, &read);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["connection_count"], 5);
        assert_eq!(v["total_connections"], 5);
        assert_eq!(v["stream_count"], 3);
        assert_eq!(v["socket_count"], 3);
        assert_eq!(v["cluster_size"], 2);
        assert_eq!(v["source"], "cluster");
        assert_eq!(v["degraded"], false);
        assert_eq!(v["node"], "a");
        assert_eq!(
            v["connections_by_topic"],
            serde_json::json!({"patterns:stream": {"a": 1, "b": 2}, "rooms:x": {"a": 1}, "rooms:y": {"b": 1}})
        );
        assert_eq!(v["nodes"]["b"]["age_ms"], 40);
        assert_eq!(v["nodes"]["a"]["age_ms"], 0);
        assert_eq!(v["nodes"]["a"]["connection_count"], 2);
        assert_eq!(
            census,
            Census {
                live: 2,
                oldest_age_ms: 40
            }
        );
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        assert!(ClusterRead::parse(&Value::Nil).is_err());
        assert!(ClusterRead::parse(&Value::Array(vec![])).is_err());
        assert!(ClusterRead::parse(&Value::Array(vec![Value::Int(1), Value::Int(2)])).is_err());
        assert!(Census::parse(&Value::Array(vec![Value::Int(1)])).is_err());
        let c = Census::parse(&Value::Array(vec![
            Value::Int(100),
            Value::Int(2),
            Value::Int(70),
        ]))
        .unwrap();
        assert_eq!(
            c,
            Census {
                live: 2,
                oldest_age_ms: 30
            }
        );
    }
}
