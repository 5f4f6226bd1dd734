//! Cluster-wide answers built from memory: ClusterStats (SPEC §3.2) and
//! occupancy (§7.2) from this node's live figures plus the view of every
//! other node. `connections_by_topic` is rendered once per change of either
//! and filter, so a burst of identical queries costs a copy each.

use super::view::View;
use crate::stats::{self, ByTopicJson, ClusterStats, Filter, NodeEntry, Reporter};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// Renderings for one (view generation, local generation), one per filter.
#[derive(Default)]
pub struct Cache {
    key: (u64, u64),
    entries: Vec<(Filter, ByTopicJson)>,
}

const CACHED: usize = 8;

/// One topic's counts: this node's and the remote ones.
struct Merged<'a> {
    topic: &'a str,
    total: u64,
}

/// `{"node": n, …}` of one topic over the cluster.
struct PerNode<'a> {
    local: Option<(&'a str, u64)>,
    remote: Vec<(&'a str, u64)>,
}

impl Serialize for PerNode<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut all: Vec<(&str, u64)> = self.remote.clone();
        all.extend(self.local);
        all.sort_unstable();
        let mut map = s.serialize_map(Some(all.len()))?;
        for (node, n) in all {
            map.serialize_entry(node, &n)?;
        }
        map.end()
    }
}

/// ClusterStats over this node and every node in the view.
pub fn cluster_stats(
    reporter: &Reporter,
    view: &View,
    cache: &Mutex<Cache>,
    filter: &Filter,
) -> String {
    let local = reporter.figures();
    let me = reporter.node();
    let now = Instant::now();
    let key = (view.generation(), local.listing.generation);
    let by_topic = {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.key != key {
            *cache = Cache {
                key,
                entries: Vec::new(),
            };
        }
        match cache.entries.iter().find(|(f, _)| f == filter) {
            Some((_, hit)) => hit.clone(),
            None => {
                let rendered = render(&local.listing.topics, me, view, filter);
                if cache.entries.len() >= CACHED {
                    cache.entries.remove(0);
                }
                cache.entries.push((filter.clone(), rendered.clone()));
                rendered
            }
        }
    };
    let mut nodes = BTreeMap::new();
    let (mut c, mut s, mut k) = (
        local.connection_count,
        local.stream_count,
        local.socket_count,
    );
    let remote = view.nodes(now);
    for n in &remote {
        c += n.totals.connections;
        s += n.totals.stream;
        k += n.totals.sockets;
        nodes.insert(
            &*n.name,
            NodeEntry {
                connection_count: n.totals.connections,
                stream_count: n.totals.stream,
                socket_count: n.totals.sockets,
                age_ms: n.age_ms,
            },
        );
    }
    nodes.insert(
        me,
        NodeEntry {
            connection_count: local.connection_count,
            stream_count: local.stream_count,
            socket_count: local.socket_count,
            age_ms: 0,
        },
    );
    stats::to_json(&ClusterStats {
        connection_count: c,
        stream_count: s,
        socket_count: k,
        connections_by_topic: &by_topic.json,
        topics_omitted: by_topic.omitted,
        cluster_size: nodes.len(),
        nodes,
        total_connections: c,
        source: "cluster",
        degraded: false,
        error: None,
        node: me,
        timestamp: stats::timestamp(),
    })
}

/// `connections_by_topic` over the cluster under `filter`.
fn render(local: &[(Arc<str>, u64)], me: &str, view: &View, filter: &Filter) -> ByTopicJson {
    let local_count = |topic: &str| {
        local
            .binary_search_by(|(t, _)| (**t).cmp(topic))
            .map_or(0, |i| local[i].1)
    };
    view.with_topics(|remote| {
        let mut merged: Vec<Merged<'_>> = remote
            .totals()
            .map(|(topic, n)| Merged {
                topic,
                total: n + local_count(topic),
            })
            .collect();
        merged.extend(
            local
                .iter()
                .filter(|(t, _)| remote.total(t) == 0)
                .map(|(t, n)| Merged {
                    topic: t,
                    total: *n,
                }),
        );
        let (kept, omitted) = filter.apply(merged, |m| (m.topic, m.total));
        // Written in the kept order (largest first under a limit).
        let entries: Vec<(&str, PerNode<'_>)> = kept
            .iter()
            .map(|m| {
                let n = local_count(m.topic);
                let per_node = PerNode {
                    local: (n > 0).then_some((me, n)),
                    remote: remote.per_node(m.topic).collect(),
                };
                (m.topic, per_node)
            })
            .collect();
        ByTopicJson {
            json: Arc::from(stats::raw(stats::to_json(&Ordered(&entries)))),
            omitted,
        }
    })
}

/// A map written in the order of its entries.
struct Ordered<'a, V>(&'a [(&'a str, V)]);

impl<V: Serialize> Serialize for Ordered<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct TopicOccupancy<'a> {
    connections: u64,
    nodes: PerNode<'a>,
}

#[derive(Serialize)]
struct Occupancy<'a> {
    topics: Ordered<'a, TopicOccupancy<'a>>,
    source: &'static str,
    degraded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    timestamp: String,
}

/// The `get_occupancy` answer (§7.2) for `topics`; `view` is `None` on a
/// single node and when the cluster is degraded (then `error` says why).
pub fn occupancy(
    reporter: &Reporter,
    view: Option<&View>,
    error: Option<&str>,
    topics: &[String],
) -> String {
    let me = reporter.node();
    let remote: Vec<Vec<(Arc<str>, u64)>> = topics
        .iter()
        .map(|t| view.map_or_else(Vec::new, |v| v.topic(t)))
        .collect();
    let entries: Vec<(&str, TopicOccupancy<'_>)> = topics
        .iter()
        .zip(&remote)
        .map(|(t, remote)| {
            let n = reporter.count(t);
            let per_node = PerNode {
                local: (n > 0).then_some((me, n)),
                remote: remote.iter().map(|(node, n)| (&**node, *n)).collect(),
            };
            let connections = n + per_node.remote.iter().map(|(_, n)| n).sum::<u64>();
            (
                t.as_str(),
                TopicOccupancy {
                    connections,
                    nodes: per_node,
                },
            )
        })
        .collect();
    stats::to_json(&Occupancy {
        topics: Ordered(&entries),
        source: if view.is_some() { "cluster" } else { "local" },
        degraded: error.is_some(),
        error,
        timestamp: stats::timestamp(),
    })
}
