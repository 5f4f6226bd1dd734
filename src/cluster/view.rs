//! Every other live node's figures, held in memory, so cluster stats and
//! occupancy answer without a Redis round trip. Fed by each node's stream of
//! deltas (sequence-numbered, one per write batch) and, when a node's stream
//! has a gap or this node starts or comes back, by that node's snapshot.
//! A node not heard from for the TTL leaves the view, as a node that says
//! goodbye does at once.
//!
//! Topics are stored once, each with the counts of the nodes that have it
//! (node slots are small integers), so the view costs a few tens of bytes per
//! (node, topic) and a node's departure is one walk over the topics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::time::{Duration, Instant};

/// A node's totals, as its deltas and snapshots carry them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub stream: u64,
    pub sockets: u64,
}

/// One node's figures at one point of its sequence: every topic (`full`) or
/// the topics that changed (absolute counts; 0 = gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub node: String,
    /// The writing process: a restarted node starts a new sequence.
    pub origin: String,
    pub seq: u64,
    pub full: bool,
    pub totals: Totals,
    pub topics: Vec<(String, u64)>,
    /// Presence metas that came or went (all of them when `full`); the
    /// view keeps counts only and hands these to the presence component.
    pub presence: Vec<crate::presence::Outgoing>,
}

/// Why a delta could not be applied: the node's snapshot must be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap;

struct Node {
    name: Arc<str>,
    origin: Box<str>,
    seq: u64,
    totals: Totals,
    heard: Instant,
}

impl Node {
    fn last_heard(&self) -> Heard {
        Heard {
            origin: self.origin.clone(),
            seq: self.seq,
            at: self.heard,
        }
    }
}

#[derive(Default)]
struct Inner {
    slots: Vec<Option<Node>>,
    by_name: HashMap<Arc<str>, u16>,
    /// topic → (node slot, count) for every node that has it.
    topics: HashMap<Arc<str>, Vec<(u16, u32)>>,
}

/// A remote node as a query sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: Arc<str>,
    pub totals: Totals,
    pub age_ms: u64,
}

/// What the view last heard from a node: the process and sequence number
/// of the last delta applied, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heard {
    pub origin: Box<str>,
    pub seq: u64,
    pub at: Instant,
}

#[derive(Default)]
pub struct View {
    inner: RwLock<Inner>,
    /// Bumped whenever a count in the view changes (not on heartbeats).
    generation: AtomicU64,
}

impl Inner {
    fn slot(&mut self, name: &str, origin: &str, now: Instant) -> u16 {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let node = Node {
            name: Arc::from(name),
            origin: origin.into(),
            seq: 0,
            totals: Totals::default(),
            heard: now,
        };
        let i = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.by_name.insert(node.name.clone(), i as u16);
        self.slots[i] = Some(node);
        i as u16
    }

    /// Sets `slot`'s count of `topic`; returns whether it changed.
    fn set(&mut self, slot: u16, topic: &str, n: u64) -> bool {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match self.topics.get_mut(topic) {
            Some(counts) => {
                let at = counts.iter().position(|(s, _)| *s == slot);
                match (at, n) {
                    (Some(i), 0) => {
                        counts.swap_remove(i);
                        if counts.is_empty() {
                            self.topics.remove(topic);
                        }
                        true
                    }
                    (Some(i), n) => std::mem::replace(&mut counts[i].1, n) != n,
                    (None, 0) => false,
                    (None, n) => {
                        counts.push((slot, n));
                        true
                    }
                }
            }
            None if n == 0 => false,
            None => {
                self.topics.insert(Arc::from(topic), vec![(slot, n)]);
                true
            }
        }
    }

    /// Drops every count of `slot`; returns the topics and counts dropped.
    fn clear(&mut self, slot: u16) -> Vec<(Arc<str>, u32)> {
        let mut dropped = Vec::new();
        self.topics.retain(|topic, counts| {
            if let Some(i) = counts.iter().position(|(s, _)| *s == slot) {
                dropped.push((topic.clone(), counts.swap_remove(i).1));
            }
            !counts.is_empty()
        });
        dropped
    }

    fn remove(&mut self, slot: u16) -> Vec<Arc<str>> {
        let changed = self.clear(slot).into_iter().map(|(t, _)| t).collect();
        if let Some(node) = self.slots[usize::from(slot)].take() {
            self.by_name.remove(&node.name);
        }
        changed
    }
}

impl View {
    pub fn new() -> View {
        View::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Every write leaves the view consistent, so a poisoned lock still
        // holds true figures.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn bump(&self, changed: &[Arc<str>], totals_changed: bool) {
        if !changed.is_empty() || totals_changed {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Applies the next delta of a node's stream. A full delta replaces what
    /// the view holds for the node; a partial one must follow the last
    /// applied one of the same process, or the view has missed something
    /// (`Gap`). `now` is when the node was alive (when it wrote a snapshot
    /// read later, say). Returns the topics whose counts changed.
    pub fn apply(&self, delta: &Delta, now: Instant) -> Result<Vec<Arc<str>>, Gap> {
        let mut inner = self.write();
        let known = inner.by_name.get(delta.node.as_str()).copied();
        let last = known
            .and_then(|i| inner.slots[usize::from(i)].as_ref())
            .filter(|n| *n.origin == *delta.origin)
            .map(|n| n.seq);
        // Anything but the next delta of the same process, even one that
        // looks already applied (it may differ from what was), sends the
        // view to the node's snapshot.
        if !delta.full && last.is_none_or(|seq| delta.seq != seq + 1) {
            return Err(Gap);
        }
        let slot = inner.slot(&delta.node, &delta.origin, now);
        let mut changed = Vec::new();
        if delta.full {
            let mut before: HashMap<Arc<str>, u32> = inner.clear(slot).into_iter().collect();
            for (topic, n) in &delta.topics {
                inner.set(slot, topic, *n);
                let now_n = u32::try_from(*n).unwrap_or(u32::MAX);
                if before.remove(topic.as_str()).unwrap_or(0) != now_n {
                    changed.push(Arc::from(topic.as_str()));
                }
            }
            changed.extend(before.into_keys());
        } else {
            for (topic, n) in &delta.topics {
                if inner.set(slot, topic, *n) {
                    changed.push(Arc::from(topic.as_str()));
                }
            }
        }
        let Some(node) = inner.slots[usize::from(slot)].as_mut() else {
            return Ok(changed);
        };
        let totals_changed = node.totals != delta.totals;
        node.origin = delta.origin.as_str().into();
        node.seq = delta.seq;
        node.totals = delta.totals;
        // A snapshot may show the node alive earlier than it was last heard.
        node.heard = node.heard.max(now);
        drop(inner);
        self.bump(&changed, totals_changed);
        Ok(changed)
    }

    /// Takes a node out (it said goodbye, or its snapshot is gone); returns
    /// the topics whose counts changed.
    pub fn remove(&self, node: &str) -> Vec<Arc<str>> {
        let mut inner = self.write();
        let Some(&slot) = inner.by_name.get(node) else {
            return Vec::new();
        };
        let changed = inner.remove(slot);
        drop(inner);
        self.bump(&changed, true);
        changed
    }

    /// Takes out every node not heard from within `ttl`; returns their
    /// names and the topics whose counts changed.
    pub fn expire(&self, ttl: Duration, now: Instant) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let stale: Vec<u16> = {
            let inner = self.read();
            inner
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    n.as_ref()
                        .filter(|n| now.saturating_duration_since(n.heard) > ttl)
                        .map(|_| i as u16)
                })
                .collect()
        };
        if stale.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let mut inner = self.write();
        let mut names = Vec::new();
        let mut changed = Vec::new();
        for slot in stale {
            if let Some(node) = inner.slots[usize::from(slot)].as_ref() {
                names.push(node.name.clone());
            }
            changed.extend(inner.remove(slot));
        }
        drop(inner);
        self.bump(&changed, true);
        (names, changed)
    }

    /// Names of the nodes in the view.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.read().by_name.keys().cloned().collect()
    }

    /// Every remote node, with how long ago it was heard from.
    pub fn nodes(&self, now: Instant) -> Vec<NodeView> {
        self.read()
            .slots
            .iter()
            .flatten()
            .map(|n| NodeView {
                name: n.name.clone(),
                totals: n.totals,
                age_ms: now.saturating_duration_since(n.heard).as_millis() as u64,
            })
            .collect()
    }

    /// Every node not heard from within `limit`, with what was last heard.
    pub fn silent(&self, limit: Duration, now: Instant) -> Vec<(Arc<str>, Heard)> {
        self.read()
            .slots
            .iter()
            .flatten()
            .filter(|n| now.saturating_duration_since(n.heard) > limit)
            .map(|n| (n.name.clone(), n.last_heard()))
            .collect()
    }

    /// What was last heard from `node`, if it is in the view.
    pub fn last_heard(&self, node: &str) -> Option<Heard> {
        let inner = self.read();
        let slot = *inner.by_name.get(node)?;
        inner.slots[usize::from(slot)]
            .as_ref()
            .map(Node::last_heard)
    }

    /// `topic`'s count on each remote node that has it.
    pub fn topic(&self, topic: &str) -> Vec<(Arc<str>, u64)> {
        let inner = self.read();
        inner.topics.get(topic).map_or_else(Vec::new, |counts| {
            counts
                .iter()
                .filter_map(|(slot, n)| {
                    let node = inner.slots[usize::from(*slot)].as_ref()?;
                    Some((node.name.clone(), u64::from(*n)))
                })
                .collect()
        })
    }

    /// Calls `f` with every remote topic, its remote total, and a way to list
    /// its per-node counts, under one read of the view.
    pub fn with_topics<R>(&self, f: impl FnOnce(&TopicsRef<'_>) -> R) -> R {
        let inner = self.read();
        f(&TopicsRef { inner: &inner })
    }
}

/// The view's topics under one read lock.
pub struct TopicsRef<'a> {
    inner: &'a Inner,
}

impl TopicsRef<'_> {
    /// Every remote topic and its total over the remote nodes.
    pub fn totals(&self) -> impl Iterator<Item = (&Arc<str>, u64)> + '_ {
        self.inner
            .topics
            .iter()
            .map(|(t, counts)| (t, counts.iter().map(|(_, n)| u64::from(*n)).sum()))
    }

    /// The remote total of one topic.
    pub fn total(&self, topic: &str) -> u64 {
        self.inner
            .topics
            .get(topic)
            .map_or(0, |c| c.iter().map(|(_, n)| u64::from(*n)).sum())
    }

    /// `topic`'s count on each remote node that has it.
    pub fn per_node(&self, topic: &str) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.inner
            .topics
            .get(topic)
            .into_iter()
            .flatten()
            .filter_map(|(slot, n)| {
                let node = self.inner.slots[usize::from(*slot)].as_ref()?;
                Some((&*node.name, u64::from(*n)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(node: &str, seq: u64, full: bool, topics: &[(&str, u64)]) -> Delta {
        Delta {
            node: node.into(),
            origin: format!("{node}/1"),
            seq,
            full,
            totals: Totals {
                connections: topics.iter().map(|(_, n)| n).sum(),
                stream: 0,
                sockets: 1,
            },
            topics: topics.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            presence: Vec::new(),
        }
    }

    fn sorted(mut v: Vec<Arc<str>>) -> Vec<String> {
        v.sort();
        v.into_iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn silent_nodes_come_with_what_was_last_heard() {
        let view = View::new();
        let start = Instant::now();
        view.apply(&delta("a", 1, true, &[("x", 1)]), start)
            .unwrap();
        view.apply(&delta("b", 4, true, &[("x", 1)]), start)
            .unwrap();
        let later = start + Duration::from_secs(2);
        view.apply(&delta("a", 2, false, &[("x", 2)]), later)
            .unwrap();
        let silent = view.silent(Duration::from_secs(1), later);
        let b = Heard {
            origin: "b/1".into(),
            seq: 4,
            at: start,
        };
        assert_eq!(silent, vec![(Arc::from("b"), b.clone())]);
        assert_eq!(view.last_heard("b"), Some(b));
        assert_eq!(
            view.last_heard("a").map(|h| (h.seq, h.at)),
            Some((2, later))
        );
        assert_eq!(view.last_heard("c"), None);
        assert!(view.silent(Duration::from_secs(3), later).is_empty());
    }

    #[test]
    fn deltas_in_sequence_apply_and_a_gap_asks_for_the_snapshot() {
        let view = View::new();
        let now = Instant::now();
        assert_eq!(
            view.apply(&delta("b", 5, false, &[("x", 1)]), now),
            Err(Gap)
        );
        let changed = view
            .apply(&delta("b", 1, true, &[("x", 2), ("y", 1)]), now)
            .unwrap();
        assert_eq!(sorted(changed), ["x", "y"]);
        let g = view.generation();
        assert_eq!(view.topic("x"), vec![(Arc::from("b"), 2)]);
        let changed = view
            .apply(&delta("b", 2, false, &[("x", 0), ("z", 4)]), now)
            .unwrap();
        assert_eq!(sorted(changed), ["x", "z"]);
        assert!(view.generation() > g);
        assert!(view.topic("x").is_empty());
        assert_eq!(
            view.apply(&delta("b", 4, false, &[("z", 1)]), now),
            Err(Gap)
        );
        let mut restarted = delta("b", 3, false, &[]);
        restarted.origin = "b/2".into();
        assert_eq!(view.apply(&restarted, now), Err(Gap), "a new process");
        // A heartbeat (no topics, same totals) changes nothing.
        let g = view.generation();
        let mut beat = delta("b", 3, false, &[]);
        beat.totals = view.nodes(now)[0].totals;
        assert!(view.apply(&beat, now).unwrap().is_empty());
        assert_eq!(view.generation(), g);
    }

    #[test]
    fn a_full_delta_replaces_and_nodes_leave_by_goodbye_or_silence() {
        let view = View::new();
        let t0 = Instant::now();
        view.apply(&delta("b", 1, true, &[("x", 2), ("y", 1)]), t0)
            .unwrap();
        view.apply(&delta("c", 1, true, &[("x", 3)]), t0).unwrap();
        view.with_topics(|t| assert_eq!(t.total("x"), 5));
        let changed = view.apply(&delta("b", 9, true, &[("y", 1)]), t0).unwrap();
        assert_eq!(sorted(changed), ["x"], "y is unchanged");
        view.with_topics(|t| assert_eq!(t.total("x"), 3));
        let t1 = t0 + Duration::from_secs(2);
        view.apply(&delta("c", 2, false, &[]), t1).unwrap();
        let (gone, changed) = view.expire(Duration::from_secs(1), t1);
        assert_eq!(gone, vec![Arc::from("b")]);
        assert_eq!(sorted(changed), ["y"]);
        assert_eq!(sorted(view.remove("c")), ["x"]);
        assert!(view.names().is_empty());
        view.with_topics(|t| assert_eq!(t.totals().count(), 0));
    }

    #[test]
    fn a_node_is_as_old_as_its_last_word_even_from_an_older_snapshot() {
        let view = View::new();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(800);
        // Heard at t1, then its snapshot (written at t0) is read.
        view.apply(&delta("b", 1, true, &[("x", 1)]), t1).unwrap();
        view.apply(&delta("b", 1, true, &[("x", 1)]), t0).unwrap();
        assert_eq!(view.nodes(t1)[0].age_ms, 0);
        // A node first seen in a snapshot written at t0 is that old.
        view.apply(&delta("c", 4, true, &[("x", 2)]), t0).unwrap();
        let (gone, _) = view.expire(Duration::from_millis(500), t1);
        assert_eq!(gone, vec![Arc::from("c")]);
    }
}
