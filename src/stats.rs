//! The payload shapes of SPEC §3–§4 — LocalStats, the monitoring block,
//! ClusterStats — as serde structs, and the node's own figures rendered into
//! them. `connections_by_topic` is rendered once per change of the counts
//! and spliced in as raw JSON, so a burst of queries over 10,000 topics costs
//! a copy each, not a walk.

use crate::registry::{Listing, Registry};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
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

/// The `prefix` / `limit` filters of SPEC §7.3: which topics a stats
/// answer lists in `connections_by_topic` (its totals always cover all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub prefix: Option<String>,
    pub limit: Option<usize>,
}

/// Largest `limit` a caller may ask for.
pub const MAX_LIMIT: usize = 100_000;

/// A filter that cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("limit must be an integer from 1 to 100000")]
    Limit,
    #[error("prefix must be a string")]
    Prefix,
}

impl FilterError {
    /// The short reason of an error reply.
    pub fn reason(self) -> &'static str {
        match self {
            FilterError::Limit => "bad limit",
            FilterError::Prefix => "bad prefix",
        }
    }
}

const BAD_LIMIT: FilterError = FilterError::Limit;
const BAD_PREFIX: FilterError = FilterError::Prefix;

impl Filter {
    /// At most `limit` topics, largest first (what pushes carry).
    pub fn top(limit: usize) -> Filter {
        Filter {
            prefix: None,
            limit: Some(limit),
        }
    }

    fn limit(n: Option<u64>) -> Result<Option<usize>, FilterError> {
        match n {
            None => Ok(None),
            Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => Ok(Some(n as usize)),
            Some(_) => Err(BAD_LIMIT),
        }
    }

    /// From a request payload (`{"prefix": "rooms:", "limit": 10}`); any
    /// other field is ignored, as a null of either is.
    pub fn from_payload(payload: Option<&Map<String, Value>>) -> Result<Filter, FilterError> {
        let Some(map) = payload else {
            return Ok(Filter::default());
        };
        let prefix = match map.get("prefix") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.clone()),
            Some(_) => return Err(BAD_PREFIX),
        };
        let limit = match map.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or(BAD_LIMIT)?),
        };
        Ok(Filter {
            prefix,
            limit: Filter::limit(limit)?,
        })
    }

    /// From HTTP query parameters `prefix` and `limit`.
    pub fn from_query(query: Option<&str>) -> Result<Filter, FilterError> {
        let mut filter = Filter::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "prefix" => filter.prefix = Some(v.into_owned()),
                "limit" => {
                    let n = v.trim().parse::<u64>().map_err(|_| BAD_LIMIT)?;
                    filter.limit = Filter::limit(Some(n))?;
                }
                _ => {}
            }
        }
        Ok(filter)
    }

    fn admits(&self, topic: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| topic.starts_with(p))
    }

    /// The entries it keeps, in the order an answer lists them: largest
    /// first (ties by name) when there is a limit, by name otherwise; and
    /// how many matched the prefix but were left out.
    pub fn apply<T>(&self, mut matched: Vec<T>, key: impl Fn(&T) -> (&str, u64)) -> (Vec<T>, u64) {
        matched.retain(|t| self.admits(key(t).0));
        let Some(limit) = self.limit else {
            matched.sort_unstable_by(|a, b| key(a).0.cmp(key(b).0));
            return (matched, 0);
        };
        let order = |a: &T, b: &T| {
            let (ta, na) = key(a);
            let (tb, nb) = key(b);
            nb.cmp(&na).then_with(|| ta.cmp(tb))
        };
        let omitted = matched.len().saturating_sub(limit) as u64;
        if matched.len() > limit {
            matched.select_nth_unstable_by(limit - 1, order);
            matched.truncate(limit);
        }
        matched.sort_unstable_by(order);
        (matched, omitted)
    }
}

/// SPEC §3.1 (with §7.3's `topics_omitted`).
#[derive(Serialize)]
pub struct LocalStats<'a> {
    pub node: &'a str,
    pub connection_count: u64,
    pub stream_count: u64,
    pub socket_count: u64,
    pub connections_by_topic: &'a RawValue,
    pub topics_omitted: u64,
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
    pub topics_omitted: u64,
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

/// `connections_by_topic` as rendered for one filter.
#[derive(Clone)]
pub struct ByTopicJson {
    pub json: Arc<RawValue>,
    pub omitted: u64,
}

/// Renderings of the current generation of counts, one per filter asked.
#[derive(Default)]
struct Rendered {
    generation: u64,
    entries: Vec<(Filter, ByTopicJson)>,
}

/// Distinct filters kept rendered at once; a burst of queries usually asks
/// one or two.
const RENDERED: usize = 8;

/// The node's own figures in the shapes above.
pub struct Reporter {
    registry: Arc<Registry>,
    started: Instant,
    rendered: Mutex<Rendered>,
    /// The last RSS read and when (ms since `started`): a stream of joins
    /// each getting `initial_stats` would otherwise read /proc per join.
    rss: Mutex<Option<(u64, u64)>>,
}

/// How long an RSS reading serves the monitoring block.
const RSS_FRESH_MS: u64 = 250;

/// One moment's totals, and the listing they were taken from.
pub struct Figures {
    pub listing: Arc<Listing>,
    pub connection_count: u64,
    pub stream_count: u64,
    pub socket_count: u64,
}

impl Reporter {
    pub fn new(registry: Arc<Registry>) -> Reporter {
        Reporter {
            registry,
            started: Instant::now(),
            rendered: Mutex::new(Rendered::default()),
            rss: Mutex::new(None),
        }
    }

    /// This process's RSS, read at most every `RSS_FRESH_MS`.
    fn memory_bytes(&self) -> u64 {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut last = self.rss.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some((at, bytes)) if now.saturating_sub(at) < RSS_FRESH_MS => bytes,
            _ => {
                let bytes = rss_bytes();
                *last = Some((now, bytes));
                bytes
            }
        }
    }

    pub fn node(&self) -> &str {
        self.registry.node()
    }

    /// Members of `topic` on this node.
    pub fn count(&self, topic: &str) -> u64 {
        self.registry.count(topic)
    }

    /// The figures of this moment. The counts are taken from the listing
    /// itself, so one answer always adds up.
    pub fn figures(&self) -> Figures {
        let listing = self.registry.listing();
        let stream_count = listing
            .topics
            .binary_search_by(|(t, _)| (**t).cmp(crate::topics::STREAM))
            .map_or(0, |i| listing.topics[i].1);
        Figures {
            connection_count: listing.topics.iter().map(|(_, n)| n).sum(),
            stream_count,
            socket_count: self.registry.sockets(),
            listing,
        }
    }

    /// `connections_by_topic` of `figures` under `filter`, rendered once
    /// per change of the counts and filter.
    pub fn by_topic(&self, figures: &Figures, filter: &Filter) -> ByTopicJson {
        let generation = figures.listing.generation;
        let mut rendered = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        if rendered.generation != generation {
            *rendered = Rendered {
                generation,
                entries: Vec::new(),
            };
        }
        if let Some((_, hit)) = rendered.entries.iter().find(|(f, _)| f == filter) {
            return hit.clone();
        }
        let topics = &figures.listing.topics;
        // The listing is sorted by name: a prefix is one contiguous run.
        let run = match filter.prefix.as_deref() {
            None => &topics[..],
            Some(p) => {
                let start = topics.partition_point(|(t, _)| &**t < p);
                let len = topics[start..].partition_point(|(t, _)| t.starts_with(p));
                &topics[start..start + len]
            }
        };
        let (kept, omitted) = filter.apply(run.iter().collect(), |(t, n)| (&**t, *n));
        let json = to_json(&ByTopic {
            node: self.node(),
            topics: kept.into_iter(),
        });
        let entry = ByTopicJson {
            json: Arc::from(raw(json)),
            omitted,
        };
        if rendered.entries.len() >= RENDERED {
            rendered.entries.remove(0);
        }
        rendered.entries.push((filter.clone(), entry.clone()));
        entry
    }

    /// LocalStats as JSON text.
    pub fn local(&self, filter: &Filter) -> String {
        let f = self.figures();
        let by_topic = self.by_topic(&f, filter);
        to_json(&LocalStats {
            node: self.node(),
            connection_count: f.connection_count,
            stream_count: f.stream_count,
            socket_count: f.socket_count,
            connections_by_topic: &by_topic.json,
            topics_omitted: by_topic.omitted,
            timestamp: timestamp(),
        })
    }

    /// The `get_monitoring` reply (and the `monitoring` of `initial_stats`).
    pub fn monitoring(&self, filter: &Filter) -> String {
        self.monitoring_around(&raw(self.local(filter)))
    }

    /// The monitoring block around a LocalStats already rendered.
    pub fn monitoring_around(&self, local: &RawValue) -> String {
        to_json(&Monitoring {
            websocket_connections: local,
            node: self.node(),
            uptime_s: self.started.elapsed().as_secs(),
            memory_bytes: self.memory_bytes(),
            version: env!("CARGO_PKG_VERSION"),
        })
    }

    /// ClusterStats made of this node's own figures: the single-node form,
    /// or the degraded form (with `error`) when Redis cannot answer.
    pub fn alone(&self, filter: &Filter, error: Option<&str>) -> String {
        let f = self.figures();
        let by_topic = self.by_topic(&f, filter);
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
            connections_by_topic: &by_topic.json,
            topics_omitted: by_topic.omitted,
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

    /// A plain V2 member with an outbox of its own.
    fn member() -> Member {
        Member {
            outbox: Arc::new(Outbox::new(8, 1 << 20)),
            vsn: Vsn::V2,
            tag: Tag::Plain,
            occupancy: false,
            seen: 0,
        }
    }

    #[test]
    fn local_and_cluster_shapes_parse_back() {
        let registry = Registry::new("a@h", 100, false);
        let reporter = Reporter::new(registry.clone());
        let slot = registry.try_open_socket(10, None).unwrap();
        let _m = registry
            .join("patterns:stream", slot.id(), member())
            .unwrap();
        let all = Filter::default();
        let parsed: Value = serde_json::from_str(&reporter.local(&all)).unwrap();
        assert_eq!(parsed["connection_count"], 1);
        assert_eq!(parsed["stream_count"], 1);
        assert_eq!(parsed["socket_count"], 1);
        assert_eq!(parsed["connections_by_topic"]["patterns:stream"]["a@h"], 1);
        let ts = parsed["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24);
        assert_eq!(parsed["topics_omitted"], 0);
        let c: Value = serde_json::from_str(&reporter.alone(&all, Some("down"))).unwrap();
        assert_eq!(c["cluster_size"], 1);
        assert_eq!(c["degraded"], true);
        assert_eq!(c["error"], "down");
        assert_eq!(c["nodes"]["a@h"]["connection_count"], 1);
        let c: Value = serde_json::from_str(&reporter.alone(&all, None)).unwrap();
        assert!(c.get("error").is_none());
        let m: Value = serde_json::from_str(&reporter.monitoring(&all)).unwrap();
        assert_eq!(m["websocket_connections"]["connection_count"], 1);
    }

    #[test]
    fn filters_keep_a_prefix_and_the_largest_topics() {
        let registry = Registry::new("a", 100, false);
        let reporter = Reporter::new(registry.clone());
        let mut held = Vec::new();
        for (topic, n) in [("rooms:a", 1), ("rooms:b", 3), ("rooms:c", 2), ("x", 5)] {
            for i in 0..n {
                held.push(registry.join(topic, i, member()).unwrap());
            }
        }
        let answer =
            |filter: Filter| -> Value { serde_json::from_str(&reporter.local(&filter)).unwrap() };
        let v = answer(Filter {
            prefix: Some("rooms:".into()),
            limit: Some(2),
        });
        assert_eq!(v["connection_count"], 11, "totals cover everything");
        assert_eq!(v["topics_omitted"], 1);
        let keys: Vec<&String> = v["connections_by_topic"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["rooms:b", "rooms:c"], "largest first");
        let v = answer(Filter::top(1));
        assert_eq!(
            v["connections_by_topic"],
            serde_json::json!({"x": {"a": 5}})
        );
        assert_eq!(v["topics_omitted"], 3);
        let v = answer(Filter {
            prefix: Some("zzz".into()),
            limit: None,
        });
        assert_eq!(v["connections_by_topic"], serde_json::json!({}));
        assert_eq!(v["topics_omitted"], 0);
    }

    #[test]
    fn bad_filters_are_refused() {
        let map = |v: Value| v.as_object().cloned().unwrap();
        assert!(Filter::from_payload(Some(&map(serde_json::json!({"limit": 0})))).is_err());
        assert!(Filter::from_payload(Some(&map(serde_json::json!({"limit": 100001})))).is_err());
        assert!(Filter::from_payload(Some(&map(serde_json::json!({"limit": "5"})))).is_err());
        assert!(Filter::from_payload(Some(&map(serde_json::json!({"prefix": 5})))).is_err());
        assert_eq!(
            Filter::from_payload(Some(&map(serde_json::json!({"limit": 7, "prefix": "a"})))),
            Ok(Filter {
                prefix: Some("a".into()),
                limit: Some(7)
            })
        );
        assert_eq!(
            Filter::from_query(Some("prefix=rooms%3A&limit=3")),
            Ok(Filter {
                prefix: Some("rooms:".into()),
                limit: Some(3)
            })
        );
        assert!(Filter::from_query(Some("limit=x")).is_err());
        assert_eq!(Filter::from_query(None), Ok(Filter::default()));
    }
}
