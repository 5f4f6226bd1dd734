//! The one owner of the counts: memberships per topic on this node, and open
//! sockets. Nothing else increments or decrements. A membership is a
//! `Membership` value and a socket a `SocketSlot`; dropping either takes its
//! count back down, so every way a membership or socket can end (leave,
//! duplicate join, close, reset, timeout, slow consumer, shutdown, panic)
//! goes through the same path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

pub const STREAM_TOPIC: &str = "patterns:stream";

#[derive(Default)]
struct Inner {
    topics: BTreeMap<Arc<str>, u64>,
    memberships: u64,
    sockets: u64,
    /// Most sockets open at once since `take_socket_peak` last asked.
    sockets_peak: u64,
    joins: u64,
    leaves: u64,
    /// Bumped whenever `topics` changes; keys the cached JSON below.
    topics_generation: u64,
    by_topic_json: Option<(u64, Arc<str>)>,
}

pub struct Tally {
    node: Arc<str>,
    node_json: String,
    inner: Mutex<Inner>,
    /// Carries a counter bumped on every change, for watchers that coalesce.
    changes: watch::Sender<u64>,
}

/// The figures of one moment, with `connections_by_topic` already encoded.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub connection_count: u64,
    pub stream_count: u64,
    pub socket_count: u64,
    pub topic_count: u64,
    /// `{"topic":{"node":n},…}`, shared while counts do not change.
    pub by_topic_json: Arc<str>,
}

impl Tally {
    pub fn new(node: &str) -> Arc<Tally> {
        Arc::new(Tally {
            node: node.into(),
            node_json: crate::protocol::json_string(node),
            inner: Mutex::new(Inner::default()),
            changes: watch::Sender::new(0),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each critical section leaves `Inner` consistent, so a poisoned lock
        // still holds true counts.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Starts a membership; it ends when the returned value is dropped.
    pub fn join(self: &Arc<Self>, topic: &str) -> Membership {
        let mut inner = self.lock();
        let key = match inner.topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        };
        *inner.topics.entry(key.clone()).or_insert(0) += 1;
        inner.memberships += 1;
        inner.joins += 1;
        inner.topics_generation += 1;
        drop(inner);
        self.changed();
        Membership {
            tally: self.clone(),
            topic: key,
        }
    }

    fn leave(&self, topic: &str) {
        let mut inner = self.lock();
        let gone = match inner.topics.get_mut(topic) {
            Some(n) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if gone {
            inner.topics.remove(topic);
        }
        inner.memberships -= 1;
        inner.leaves += 1;
        inner.topics_generation += 1;
        drop(inner);
        self.changed();
    }

    /// Opens a socket slot if fewer than `max` are open.
    pub fn try_open_socket(self: &Arc<Self>, max: u64) -> Option<SocketSlot> {
        let mut inner = self.lock();
        if inner.sockets >= max {
            return None;
        }
        inner.sockets += 1;
        inner.sockets_peak = inner.sockets_peak.max(inner.sockets);
        drop(inner);
        self.changed();
        Some(SocketSlot {
            tally: self.clone(),
        })
    }

    fn close_socket(&self) {
        self.lock().sockets -= 1;
        self.changed();
    }

    /// Memberships started and ended since start.
    pub fn totals(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.joins, inner.leaves)
    }

    pub fn sockets(&self) -> u64 {
        self.lock().sockets
    }

    /// (most sockets open at once since the last call, sockets open now);
    /// starts the next period at the current count.
    pub fn take_socket_peak(&self) -> (u64, u64) {
        let mut inner = self.lock();
        let peak = inner.sockets_peak.max(inner.sockets);
        inner.sockets_peak = inner.sockets;
        (peak, inner.sockets)
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut inner = self.lock();
        let generation = inner.topics_generation;
        let by_topic_json = match &inner.by_topic_json {
            Some((g, json)) if *g == generation => json.clone(),
            _ => {
                let json: Arc<str> = self.encode_by_topic(&inner.topics).into();
                inner.by_topic_json = Some((generation, json.clone()));
                json
            }
        };
        Snapshot {
            connection_count: inner.memberships,
            stream_count: inner.topics.get(STREAM_TOPIC).copied().unwrap_or(0),
            socket_count: inner.sockets,
            topic_count: inner.topics.len() as u64,
            by_topic_json,
        }
    }

    /// Per-topic counts, for code that needs the numbers (cluster sync, metrics).
    pub fn topic_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.lock()
            .topics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn count(&self, topic: &str) -> u64 {
        self.lock().topics.get(topic).copied().unwrap_or(0)
    }

    fn encode_by_topic(&self, topics: &BTreeMap<Arc<str>, u64>) -> String {
        let mut out = String::with_capacity(2 + topics.len() * (self.node_json.len() + 32));
        out.push('{');
        for (i, (topic, n)) in topics.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&crate::protocol::json_string(topic));
            out.push_str(":{");
            out.push_str(&self.node_json);
            out.push(':');
            out.push_str(itoa(*n).as_str());
            out.push('}');
        }
        out.push('}');
        out
    }

    /// A receiver that sees a new value after every change of any count.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn itoa(n: u64) -> String {
    n.to_string()
}

/// One channel membership, counted while it lives.
pub struct Membership {
    tally: Arc<Tally>,
    topic: Arc<str>,
}

impl Membership {
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.tally.leave(&self.topic);
    }
}

/// One open socket, counted while it lives.
pub struct SocketSlot {
    tally: Arc<Tally>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.tally.close_socket();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_memberships_counts_down_and_empty_topics_vanish() {
        let t = Tally::new("n@h");
        let a = t.join("patterns:stream");
        let b = t.join("patterns:stream");
        let c = t.join("x");
        let s = t.snapshot();
        assert_eq!(
            (s.connection_count, s.stream_count, s.topic_count),
            (3, 2, 2)
        );
        assert_eq!(
            &*s.by_topic_json,
            r#"{"patterns:stream":{"n@h":2},"x":{"n@h":1}}"#
        );
        drop(a);
        drop(c);
        let s = t.snapshot();
        assert_eq!(&*s.by_topic_json, r#"{"patterns:stream":{"n@h":1}}"#);
        drop(b);
        let s = t.snapshot();
        assert_eq!((s.connection_count, s.topic_count), (0, 0));
        assert_eq!(&*s.by_topic_json, "{}");
    }

    #[test]
    fn socket_slots_respect_the_limit() {
        let t = Tally::new("n");
        let a = t.try_open_socket(1).unwrap();
        assert!(t.try_open_socket(1).is_none());
        drop(a);
        assert!(t.try_open_socket(1).is_some());
        assert_eq!(t.sockets(), 0);
    }
}
