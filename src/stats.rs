//! The payload shapes of SPEC §3–§4 — LocalStats, the monitoring block,
//! ClusterStats — as serde structs, and the node's own figures rendered into
//! them. `connections_by_topic` is rendered once per change of the counts
//! and spliced in as raw JSON, so a burst of queries over 10,000 topics costs
//! a copy each, not a walk.

use crate::registry::{Listing, Registry};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// RFC 3339 UTC with milliseconds.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Resident set size of this process, from /proc (0 where unavailable).
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Serialises a value that cannot fail to serialise (plain structs of
/// strings, numbers and raw JSON).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

/// SPEC §3.1.
#[derive(Serialize)]
pub struct LocalStats<'a> {
    pub node: &'a str,
    pub connection_count: u64,
    pub stream_count: u64,
    pub socket_count: u64,
    pub connections_by_topic: &'a RawValue,
    pub timestamp: String,
}

/// One node's entry in ClusterStats' `nodes`.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub connection_count: u64,
    pub stream_count: u64,
    pub socket_count: u64,
    pub age_ms: u64,
}

/// SPEC §3.2.
#[derive(Serialize)]
pub struct ClusterStats<'a> {
    pub connection_count: u64,
    pub stream_count: u64,
    pub socket_count: u64,
    pub connections_by_topic: &'a RawValue,
    pub nodes: BTreeMap<&'a str, NodeEntry>,
    pub total_connections: u64,
    pub cluster_size: usize,
    pub source: &'static str,
    pub degraded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    pub node: &'a str,
    pub timestamp: String,
}

/// The `get_monitoring` reply.
#[derive(Serialize)]
struct Monitoring<'a> {
    websocket_connections: &'a RawValue,
    node: &'a str,
    uptime_s: u64,
    memory_bytes: u64,
    version: &'static str,
}

/// `{"topic": {"node": n}, …}` for one node's topics.
pub struct ByTopic<'a, I> {
    pub node: &'a str,
    pub topics: I,
}

impl<'b, I> Serialize for ByTopic<'_, I>
where
    I: Iterator<Item = &'b (Arc<str>, u64)> + Clone,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (topic, n) in self.topics.clone() {
            map.serialize_entry(&**topic, &OneNode(self.node, *n))?;
        }
        map.end()
    }
}

/// `{"node": n}`, without a map allocated per topic.
struct OneNode<'a>(&'a str, u64);

impl Serialize for OneNode<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &self.1)?;
        map.end()
    }
}

/// Raw JSON from text this module produced itself.
pub fn raw(json: String) -> Box<RawValue> {
    RawValue::from_string(json)
        .unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("literal JSON"))
}

struct Rendered {
    generation: u64,
    by_topic: Arc<RawValue>,
}

/// The node's own figures in the shapes above.
pub struct Reporter {
    registry: Arc<Registry>,
    started: Instant,
    rendered: Mutex<Option<Rendered>>,
}

/// One moment's figures with `connections_by_topic` already rendered.
pub struct Figures {
    pub listing: Arc<Listing>,
    pub by_topic: Arc<RawValue>,
    pub connection_count: u64,
    pub stream_count: u64,
    pub socket_count: u64,
}

impl Reporter {
    pub fn new(registry: Arc<Registry>) -> Reporter {
        Reporter {
            registry,
            started: Instant::now(),
            rendered: Mutex::new(None),
        }
    }

    pub fn node(&self) -> &str {
        self.registry.node()
    }

    /// The figures of this moment. The counts are taken from the listing
    /// itself, so one answer always adds up.
    pub fn figures(&self) -> Figures {
        let listing = self.registry.listing();
        let mut rendered = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        let by_topic = match rendered.as_ref() {
            Some(r) if r.generation == listing.generation => r.by_topic.clone(),
            _ => {
                let json = to_json(&ByTopic {
                    node: self.node(),
                    topics: listing.topics.iter(),
                });
                let by_topic: Arc<RawValue> = Arc::from(raw(json));
                *rendered = Some(Rendered {
                    generation: listing.generation,
                    by_topic: by_topic.clone(),
                });
                by_topic
            }
        };
        drop(rendered);
        let stream_count = listing
            .topics
            .binary_search_by(|(t, _)| (**t).cmp(crate::topics::STREAM))
            .map_or(0, |i| listing.topics[i].1);
        Figures {
            connection_count: listing.topics.iter().map(|(_, n)| n).sum(),
            stream_count,
            socket_count: self.registry.sockets(),
            listing,
            by_topic,
        }
    }

    /// LocalStats as JSON text.
    pub fn local(&self) -> String {
        let f = self.figures();
        to_json(&LocalStats {
            node: self.node(),
            connection_count: f.connection_count,
            stream_count: f.stream_count,
            socket_count: f.socket_count,
            connections_by_topic: &f.by_topic,
            timestamp: timestamp(),
        })
    }

    /// The `get_monitoring` reply.
    pub fn monitoring(&self) -> String {
        let local = raw(self.local());
        to_json(&Monitoring {
            websocket_connections: &local,
            node: self.node(),
            uptime_s: self.started.elapsed().as_secs(),
            memory_bytes: rss_bytes(),
            version: env!("CARGO_PKG_VERSION"),
        })
    }

    /// ClusterStats made of this node's own figures: the single-node form,
    /// or the degraded form (with `error`) when Redis cannot answer.
    pub fn alone(&self, error: Option<&str>) -> String {
        let f = self.figures();
        let me = NodeEntry {
            connection_count: f.connection_count,
            stream_count: f.stream_count,
            socket_count: f.socket_count,
            age_ms: 0,
        };
        to_json(&ClusterStats {
            connection_count: f.connection_count,
            stream_count: f.stream_count,
            socket_count: f.socket_count,
            connections_by_topic: &f.by_topic,
            nodes: BTreeMap::from([(self.node(), me)]),
            total_connections: f.connection_count,
            cluster_size: 1,
            source: "local",
            degraded: error.is_some(),
            error,
            node: self.node(),
            timestamp: timestamp(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use crate::protocol::Vsn;
    use crate::registry::{Member, Tag};
    use serde_json::Value;

    #[test]
    fn local_and_cluster_shapes_parse_back() {
        let registry = Registry::new("a@h", 100, false);
        let reporter = Reporter::new(registry.clone());
        let slot = registry.try_open_socket(10).unwrap();
        let member = Member {
            outbox: Arc::new(Outbox::new(8)),
            vsn: Vsn::V2,
            tag: Tag::Plain,
            occupancy: false,
        };
        let _m = registry.join("patterns:stream", slot.id(), member).unwrap();
        let parsed: Value = serde_json::from_str(&reporter.local()).unwrap();
        assert_eq!(parsed["connection_count"], 1);
        assert_eq!(parsed["stream_count"], 1);
        assert_eq!(parsed["socket_count"], 1);
        assert_eq!(parsed["connections_by_topic"]["patterns:stream"]["a@h"], 1);
        let ts = parsed["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24);
        let c: Value = serde_json::from_str(&reporter.alone(Some("down"))).unwrap();
        assert_eq!(c["cluster_size"], 1);
        assert_eq!(c["degraded"], true);
        assert_eq!(c["error"], "down");
        assert_eq!(c["nodes"]["a@h"]["connection_count"], 1);
        let c: Value = serde_json::from_str(&reporter.alone(None)).unwrap();
        assert!(c.get("error").is_none());
        let m: Value = serde_json::from_str(&reporter.monitoring()).unwrap();
        assert_eq!(m["websocket_connections"]["connection_count"], 1);
    }
}
