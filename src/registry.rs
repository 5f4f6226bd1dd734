//! Who is joined to what on this node, and how many. Each topic has one
//! entry holding its members (socket id → where to push and what it asked
//! for), so a topic's count *is* its member list and the two can never
//! disagree. A membership is a `Membership` value and a socket a
//! `SocketSlot`; dropping either takes it out again, so every way a
//! membership or socket can end (leave, duplicate join, close, reset,
//! timeout, slow consumer, shutdown, panic) goes through one path.
//!
//! Topics are spread over shards, each behind its own lock: a stats walk or
//! a fan-out on one topic holds one shard at a time and never the joins of
//! the others. Totals live in atomics beside the shards.

use crate::fanout;
use crate::outbox::Outbox;
use crate::protocol::{self, Vsn};
use crate::topics;
use crate::transport::codec;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

const SHARDS: usize = 32;

/// What a member asked for beyond the topic itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Plain,
    /// `patterns:vsm`: 0 for all subsystems, 1..=5 for S1..S5.
    Subsystem(u8),
    /// `patterns:stats` with or without `changes: true`.
    Stats {
        changes: bool,
    },
}

/// Which members of a topic a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    All,
    /// Members of subsystem n (1..=5) and of all subsystems.
    Subsystem(u8),
    /// `patterns:stats` members that asked for `stats_changed`.
    Changes,
    /// Members that joined with `occupancy: true`.
    Occupancy,
}

impl Select {
    fn matches(self, m: &Member) -> bool {
        match (self, m.tag) {
            (Select::Occupancy, _) => m.occupancy,
            (Select::All, _) => true,
            (Select::Subsystem(n), Tag::Subsystem(s)) => s == 0 || s == n,
            (Select::Subsystem(_), _) => true,
            (Select::Changes, Tag::Stats { changes }) => changes,
            (Select::Changes, _) => false,
        }
    }
}

/// Where one member's pushes go.
pub struct Member {
    pub outbox: Arc<Outbox>,
    pub vsn: Vsn,
    pub tag: Tag,
    /// Joined with `occupancy: true`: gets the topic's `occupancy` pushes.
    pub occupancy: bool,
    /// A fingerprint of the occupancy figures this member was last sent
    /// (0: none), so that nobody is sent the same figures twice; `JOINING`
    /// until its join's own pushes are out.
    pub seen: u32,
}

/// A member's `seen` from its insertion until its join's own pushes have
/// been queued (after the join reply): figures are not pushed to it
/// meanwhile — a push then would come before the reply, or repeat the
/// figures its own push carries (which are at least as new). Never a
/// fingerprint (those are odd) nor 0.
pub const JOINING: u32 = 2;

#[derive(Default)]
struct Topic {
    members: HashMap<u64, Member>,
    /// Members with `occupancy: true`.
    watchers: u32,
    /// Keeps messages to this topic in one order; made on the first one.
    order: Option<Arc<fanout::Order>>,
}

#[derive(Default)]
struct Shard {
    topics: HashMap<Arc<str>, Topic>,
    /// Topics whose count changed since the cluster writer last asked
    /// (kept only in cluster mode).
    changed: HashSet<Arc<str>>,
    /// Topics with watchers whose cluster-wide count may have changed since
    /// the occupancy task last asked.
    watched: HashSet<Arc<str>>,
    /// Topics whose cluster-wide count may have changed since the webhook
    /// task last asked (kept only with `--webhook-url`).
    hooked: HashSet<Arc<str>>,
}

/// A socket refused by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// `--max-connections` sockets are open.
    Limit,
    /// The client's address has `--max-connections-per-ip` open.
    PerIp,
}

/// A join refused by the registry itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("too many topics")]
    TooManyTopics,
}

/// The node's totals at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub memberships: u64,
    pub sockets: u64,
    pub topics: u64,
    pub joins: u64,
    pub leaves: u64,
}

/// Every topic with its count, sorted by name, as of one generation.
pub struct Listing {
    pub generation: u64,
    pub topics: Vec<(Arc<str>, u64)>,
}

pub struct Registry {
    node: Arc<str>,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    max_topics: u64,
    topics: AtomicU64,
    memberships: AtomicU64,
    sockets: AtomicU64,
    /// Most sockets open at once since `take_socket_peak` last asked.
    sockets_peak: AtomicU64,
    joins: AtomicU64,
    leaves: AtomicU64,
    next_socket: AtomicU64,
    /// Open sockets per client address, when that is limited.
    by_ip: Mutex<HashMap<IpAddr, u64>>,
    /// Bumped on every change of a count; watchers coalesce on it.
    changes: watch::Sender<u64>,
    listing: Mutex<Option<Arc<Listing>>>,
    /// Whether topics that changed are remembered for the cluster writer.
    track_changes: bool,
    /// Whether topics that changed are remembered for the webhook task.
    track_hooks: AtomicBool,
    /// Woken when a watched topic may have changed.
    watched: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned
    // lock still holds true counts.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// `track_changes`: remember which topics changed, for `take_changed`
    /// (a cluster node sends only those to Redis).
    pub fn new(node: &str, max_topics: u64, track_changes: bool) -> Arc<Registry> {
        Arc::new(Registry {
            node: node.into(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_topics,
            topics: AtomicU64::new(0),
            memberships: AtomicU64::new(0),
            sockets: AtomicU64::new(0),
            sockets_peak: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            leaves: AtomicU64::new(0),
            next_socket: AtomicU64::new(1),
            by_ip: Mutex::default(),
            changes: watch::Sender::new(0),
            listing: Mutex::new(None),
            track_changes,
            track_hooks: AtomicBool::new(false),
            watched: Notify::new(),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn shard(&self, topic: &str) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(topic) as usize % SHARDS;
        lock(&self.shards[i])
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Joins socket `socket` to `topic` until the returned value is dropped.
    /// A socket is in a topic at most once: the caller ends an earlier
    /// membership of the same topic first.
    pub fn join(
        self: &Arc<Self>,
        topic: &str,
        socket: u64,
        member: Member,
    ) -> Result<Membership, JoinError> {
        let mut shard = self.shard(topic);
        let key = match shard.topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => {
                let held = self.topics.fetch_add(1, Ordering::SeqCst);
                if held >= self.max_topics {
                    self.topics.fetch_sub(1, Ordering::SeqCst);
                    return Err(JoinError::TooManyTopics);
                }
                let key: Arc<str> = Arc::from(topic);
                shard.topics.insert(key.clone(), Topic::default());
                key
            }
        };
        let mut watched = false;
        if let Some(entry) = shard.topics.get_mut(&key) {
            entry.watchers += u32::from(member.occupancy);
            watched = entry.watchers > 0;
            entry.members.insert(socket, member);
        }
        self.note(&mut shard, &key, watched);
        self.memberships.fetch_add(1, Ordering::SeqCst);
        self.joins.fetch_add(1, Ordering::Relaxed);
        drop(shard);
        self.changed();
        Ok(Membership {
            registry: self.clone(),
            topic: key,
            socket,
        })
    }

    fn leave(&self, topic: &str, socket: u64) {
        let mut shard = self.shard(topic);
        let Some(key) = shard.topics.get_key_value(topic).map(|(k, _)| k.clone()) else {
            return;
        };
        let Some(entry) = shard.topics.get_mut(topic) else {
            return;
        };
        let removed = match entry.members.remove(&socket) {
            Some(m) => {
                entry.watchers -= u32::from(m.occupancy);
                true
            }
            None => false,
        };
        let watched = entry.watchers > 0;
        let members = &mut entry.members;
        // A topic that held thousands and now holds a few gives the room
        // back (amortised: only after a fall to a quarter).
        if members.capacity() > 64 && members.len() < members.capacity() / 4 {
            members.shrink_to(members.len() * 2);
        }
        if members.is_empty() {
            shard.topics.remove(topic);
            self.topics.fetch_sub(1, Ordering::SeqCst);
        }
        if removed {
            self.note(&mut shard, &key, watched);
        }
        drop(shard);
        if removed {
            self.memberships.fetch_sub(1, Ordering::SeqCst);
            self.leaves.fetch_add(1, Ordering::Relaxed);
            self.changed();
        }
    }

    /// Remembers a change of `topic` for the cluster writer and, when it has
    /// watchers, for the occupancy task.
    fn note(&self, shard: &mut Shard, topic: &Arc<str>, watched: bool) {
        if self.track_changes && !shard.changed.contains(topic) {
            shard.changed.insert(topic.clone());
        }
        if self.track_hooks.load(Ordering::Relaxed) && !shard.hooked.contains(topic) {
            shard.hooked.insert(topic.clone());
        }
        if watched && !shard.watched.contains(topic) {
            shard.watched.insert(topic.clone());
            self.watched.notify_one();
        }
    }

    /// Tells the occupancy task that `topic`'s count elsewhere in the
    /// cluster changed (the cluster view calls this); a no-op unless a
    /// member here watches it.
    pub fn touch(&self, topic: &str) {
        let mut shard = self.shard(topic);
        if self.track_hooks.load(Ordering::Relaxed) && !shard.hooked.contains(topic) {
            shard.hooked.insert(Arc::from(topic));
        }
        let Some((key, entry)) = shard.topics.get_key_value(topic) else {
            return;
        };
        if entry.watchers > 0 && !shard.watched.contains(topic) {
            let key = key.clone();
            shard.watched.insert(key);
            self.watched.notify_one();
        }
    }

    /// From now on, remembers every topic whose cluster-wide count may have
    /// changed, for `take_hooked` (the webhook task).
    pub fn track_hooks(&self) {
        self.track_hooks.store(true, Ordering::SeqCst);
    }

    /// Topics whose cluster-wide count may have changed since the last call.
    pub fn take_hooked(&self) -> Vec<Arc<str>> {
        self.take(|shard| &mut shard.hooked)
    }

    /// Topics whose count changed since the last call (cluster mode).
    pub fn take_changed(&self) -> Vec<Arc<str>> {
        self.take(|shard| &mut shard.changed)
    }

    /// Watched topics that may have changed since the last call.
    pub fn take_watched(&self) -> Vec<Arc<str>> {
        self.take(|shard| &mut shard.watched)
    }

    /// Empties one set of topics (`which`) of every shard, into one list.
    fn take(&self, which: impl Fn(&mut Shard) -> &mut HashSet<Arc<str>>) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(which(&mut lock(shard)).drain());
        }
        out
    }

    /// Every topic that has watchers now.
    pub fn watched_topics(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            out.extend(
                shard
                    .topics
                    .iter()
                    .filter(|(_, e)| e.watchers > 0)
                    .map(|(t, _)| t.clone()),
            );
        }
        out
    }

    /// Resolves when a watched topic may have changed.
    pub async fn watched_changed(&self) {
        self.watched.notified().await
    }

    /// Opens a socket slot if fewer than `max` are open and, with
    /// `per_ip = Some((ip, n))`, fewer than `n` from `ip`.
    pub fn try_open_socket(
        self: &Arc<Self>,
        max: u64,
        per_ip: Option<(IpAddr, u64)>,
    ) -> Result<SocketSlot, SlotRefusal> {
        if let Some((ip, n)) = per_ip {
            let mut by_ip = lock(&self.by_ip);
            let open = by_ip.entry(ip).or_insert(0);
            if *open >= n {
                return Err(SlotRefusal::PerIp);
            }
            *open += 1;
        }
        let slot = SocketSlot {
            registry: self.clone(),
            id: self.next_socket.fetch_add(1, Ordering::Relaxed),
            ip: per_ip.map(|(ip, _)| ip),
            counted: false,
        };
        // Dropping `slot` from here on gives the address's place back.
        let mut slot = slot;
        let open = self
            .sockets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| SlotRefusal::Limit)?
            + 1;
        slot.counted = true;
        self.sockets_peak.fetch_max(open, Ordering::Relaxed);
        self.changed();
        Ok(slot)
    }

    fn close_socket(&self, slot: &SocketSlot) {
        if let Some(ip) = slot.ip {
            let mut by_ip = lock(&self.by_ip);
            if let Some(open) = by_ip.get_mut(&ip) {
                *open -= 1;
                if *open == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
        if slot.counted {
            self.sockets.fetch_sub(1, Ordering::SeqCst);
            self.changed();
        }
    }

    pub fn sockets(&self) -> u64 {
        self.sockets.load(Ordering::SeqCst)
    }

    pub fn totals(&self) -> Totals {
        Totals {
            memberships: self.memberships.load(Ordering::SeqCst),
            sockets: self.sockets.load(Ordering::SeqCst),
            topics: self.topics.load(Ordering::SeqCst),
            joins: self.joins.load(Ordering::Relaxed),
            leaves: self.leaves.load(Ordering::Relaxed),
        }
    }

    /// (most sockets open at once since the last call, sockets open now);
    /// starts the next period at the current count.
    pub fn take_socket_peak(&self) -> (u64, u64) {
        let now = self.sockets();
        let peak = self.sockets_peak.swap(now, Ordering::Relaxed).max(now);
        (peak, now)
    }

    /// Members of `topic` on this node.
    pub fn count(&self, topic: &str) -> u64 {
        self.shard(topic)
            .topics
            .get(topic)
            .map_or(0, |t| t.members.len() as u64)
    }

    /// Every topic and its count, sorted by name. Shared while no count
    /// changes, so a burst of queries walks the shards once.
    pub fn listing(&self) -> Arc<Listing> {
        let generation = *self.changes.borrow();
        if let Some(cached) = lock(&self.listing).as_ref() {
            if cached.generation == generation {
                return cached.clone();
            }
        }
        let mut topics = Vec::with_capacity(self.topics.load(Ordering::Relaxed) as usize);
        for shard in self.shards.iter() {
            let shard = lock(shard);
            topics.extend(
                shard
                    .topics
                    .iter()
                    .map(|(t, e)| (t.clone(), e.members.len() as u64)),
            );
        }
        topics.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let listing = Arc::new(Listing { generation, topics });
        *lock(&self.listing) = Some(listing.clone());
        listing
    }

    /// Memberships of `patterns:stream`.
    pub fn stream_count(&self) -> u64 {
        self.count(topics::STREAM)
    }

    /// A receiver that sees a new value after every change of any count.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether `topic` has any member selected by `select`.
    pub fn has_members(&self, topic: &str, select: Select) -> bool {
        self.shard(topic)
            .topics
            .get(topic)
            .is_some_and(|t| t.members.values().any(|m| select.matches(m)))
    }

    /// Pushes `occupancy` figures (fingerprinted by `seen`, never 0) to the
    /// topic's watchers — or, with `everyone`, to all its members — except
    /// those that were already sent these very figures.
    pub fn publish_figures(&self, topic: &str, seen: u32, payload: &str, everyone: bool) -> usize {
        let mut shard = self.shard(topic);
        let Some(entry) = shard.topics.get_mut(topic) else {
            return 0;
        };
        if !everyone && entry.watchers == 0 {
            return 0;
        }
        let mut encoded: [Option<Bytes>; 2] = [None, None];
        let mut delivered = 0;
        for member in entry.members.values_mut() {
            if !(everyone || member.occupancy) || member.seen == seen || member.seen == JOINING {
                continue;
            }
            member.seen = seen;
            let slot = match member.vsn {
                Vsn::V1 => &mut encoded[0],
                Vsn::V2 => &mut encoded[1],
            };
            let frame = slot
                .get_or_insert_with(|| {
                    codec::text_frame(&protocol::encode(
                        member.vsn,
                        None,
                        None,
                        topic,
                        "occupancy",
                        payload,
                    ))
                })
                .clone();
            if member.outbox.push(frame) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Notes that socket `socket`'s member of `topic` was sent the
    /// occupancy figures `seen` (its first push, right after its join; 0
    /// when its join sent none), which ends its `JOINING`.
    pub fn set_seen(&self, topic: &str, socket: u64, seen: u32) {
        if let Some(entry) = self.shard(topic).topics.get_mut(topic) {
            if let Some(member) = entry.members.get_mut(&socket) {
                member.seen = seen;
            }
        }
    }

    /// Pushes one message to the selected members of `topic`, encoding it at
    /// most once per serializer version. Returns how many took it.
    pub fn publish(&self, topic: &str, event: &str, payload: &str, select: Select) -> usize {
        // The recipients are taken under the shard's lock, and written to
        // without it: joins elsewhere in the shard never wait on sockets.
        let (recipients, order) = {
            let mut shard = self.shard(topic);
            let Some(entry) = shard.topics.get_mut(topic) else {
                return 0;
            };
            if select == Select::Occupancy && entry.watchers == 0 {
                return 0;
            }
            let recipients: fanout::Recipients = entry
                .members
                .values()
                .filter(|m| select.matches(m))
                .map(|m| (m.outbox.clone(), m.vsn))
                .collect();
            let order = entry.order.get_or_insert_with(Arc::default).clone();
            (recipients, order)
        };
        let frame = |vsn: Vsn| {
            recipients.iter().any(|(_, v)| *v == vsn).then(|| {
                codec::text_frame(&protocol::encode(vsn, None, None, topic, event, payload))
            })
        };
        let frames = [frame(Vsn::V1), frame(Vsn::V2)];
        fanout::send(&order, &recipients, &frames)
    }
}

/// One channel membership, counted and subscribed while it lives.
pub struct Membership {
    registry: Arc<Registry>,
    topic: Arc<str>,
    socket: u64,
}

impl Membership {
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.registry.leave(&self.topic, self.socket);
    }
}

/// One open socket, counted while it lives; its id names it in the registry.
pub struct SocketSlot {
    registry: Arc<Registry>,
    id: u64,
    /// The address counted against `--max-connections-per-ip`, if any.
    ip: Option<IpAddr>,
    /// Whether the slot counts in the node's open sockets.
    counted: bool,
}

impl SocketSlot {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.registry.close_socket(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(outbox: &Arc<Outbox>, vsn: Vsn, tag: Tag) -> Member {
        Member {
            outbox: outbox.clone(),
            vsn,
            tag,
            occupancy: false,
            seen: 0,
        }
    }

    fn counts(r: &Registry) -> Vec<(String, u64)> {
        r.listing()
            .topics
            .iter()
            .map(|(t, n)| (t.to_string(), *n))
            .collect()
    }

    #[test]
    fn dropping_memberships_counts_down_and_empty_topics_vanish() {
        let r = Registry::new("n@h", 100, false);
        let o = Arc::new(Outbox::new(8, 1 << 20));
        let a = r
            .join(topics::STREAM, 1, member(&o, Vsn::V2, Tag::Plain))
            .unwrap();
        let b = r
            .join(topics::STREAM, 2, member(&o, Vsn::V2, Tag::Plain))
            .unwrap();
        let c = r.join("x", 1, member(&o, Vsn::V2, Tag::Plain)).unwrap();
        let t = r.totals();
        assert_eq!((t.memberships, t.topics, r.stream_count()), (3, 2, 2));
        assert_eq!(
            counts(&r),
            vec![("patterns:stream".into(), 2), ("x".into(), 1)]
        );
        drop(a);
        drop(c);
        assert_eq!(counts(&r), vec![("patterns:stream".into(), 1)]);
        drop(b);
        assert!(counts(&r).is_empty());
        let t = r.totals();
        assert_eq!((t.memberships, t.topics, t.joins, t.leaves), (0, 0, 3, 3));
    }

    #[test]
    fn socket_slots_respect_the_limits_and_get_distinct_ids() {
        let r = Registry::new("n", 100, false);
        let a = r.try_open_socket(1, None).unwrap();
        assert_eq!(r.try_open_socket(1, None).err(), Some(SlotRefusal::Limit));
        let first = a.id();
        drop(a);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let x = r.try_open_socket(10, Some((ip, 2))).unwrap();
        let y = r.try_open_socket(10, Some((ip, 2))).unwrap();
        assert_eq!(
            r.try_open_socket(10, Some((ip, 2))).err(),
            Some(SlotRefusal::PerIp)
        );
        drop(x);
        let z = r.try_open_socket(10, Some((ip, 2))).unwrap();
        // The address's place is given back when the node is full, too.
        assert_eq!(
            r.try_open_socket(2, Some((ip, 3))).err(),
            Some(SlotRefusal::Limit)
        );
        drop((y, z));
        assert!(lock(&r.by_ip).is_empty());
        let b = r.try_open_socket(1, None).unwrap();
        assert_ne!(b.id(), first);
        drop(b);
        assert_eq!(r.sockets(), 0);
        assert_eq!(r.take_socket_peak(), (2, 0), "x and y were open at once");
    }

    #[test]
    fn a_new_topic_beyond_the_limit_is_refused_but_known_topics_still_join() {
        let r = Registry::new("n", 1, false);
        let o = Arc::new(Outbox::new(8, 1 << 20));
        let _a = r.join("a", 1, member(&o, Vsn::V2, Tag::Plain)).unwrap();
        assert_eq!(
            r.join("b", 2, member(&o, Vsn::V2, Tag::Plain)).err(),
            Some(JoinError::TooManyTopics)
        );
        let _b = r.join("a", 2, member(&o, Vsn::V2, Tag::Plain)).unwrap();
        assert_eq!(r.totals().topics, 1);
        assert_eq!(r.count("a"), 2);
    }

    #[test]
    fn publish_encodes_once_per_version_and_filters_subsystems() {
        let r = Registry::new("n", 100, false);
        let (a, b, c) = (
            Arc::new(Outbox::new(8, 1 << 20)),
            Arc::new(Outbox::new(8, 1 << 20)),
            Arc::new(Outbox::new(8, 1 << 20)),
        );
        let vsm = topics::VSM;
        let _ma = r
            .join(vsm, 1, member(&a, Vsn::V2, Tag::Subsystem(0)))
            .unwrap();
        let _mb = r
            .join(vsm, 2, member(&b, Vsn::V2, Tag::Subsystem(3)))
            .unwrap();
        let mc = r
            .join(vsm, 3, member(&c, Vsn::V1, Tag::Subsystem(1)))
            .unwrap();
        assert_eq!(r.publish(vsm, "e", "{}", Select::Subsystem(3)), 2);
        let (qa, _) = a.take();
        let (qb, _) = b.take();
        assert_eq!(qa[0].as_ptr(), qb[0].as_ptr(), "same bytes shared");
        assert!(c.is_empty());
        drop(mc);
        assert_eq!(r.count(vsm), 2);
        assert!(!r.has_members(vsm, Select::Changes));
    }

    #[test]
    fn changes_are_remembered_for_the_writer_and_watched_topics() {
        let r = Registry::new("n", 100, true);
        let o = Arc::new(Outbox::new(8, 1 << 20));
        let watcher = Member {
            occupancy: true,
            ..member(&o, Vsn::V2, Tag::Plain)
        };
        let a = r.join("a", 1, member(&o, Vsn::V2, Tag::Plain)).unwrap();
        let _w = r.join("w", 1, watcher).unwrap();
        let mut changed = r.take_changed();
        changed.sort();
        assert_eq!(changed, vec![Arc::from("a"), Arc::from("w")]);
        assert_eq!(r.take_watched(), vec![Arc::from("w")]);
        assert!(r.take_changed().is_empty() && r.take_watched().is_empty());
        drop(a);
        assert_eq!(r.take_changed(), vec![Arc::from("a")]);
        assert!(r.take_watched().is_empty(), "nobody watches a");
        r.touch("a");
        r.touch("w");
        assert_eq!(r.take_watched(), vec![Arc::from("w")]);
        assert_eq!(r.publish("w", "occupancy", "{}", Select::Occupancy), 1);
        assert_eq!(r.publish_figures("w", 7, "{}", false), 1);
        assert_eq!(r.publish_figures("w", 7, "{}", false), 0, "seen already");
        r.set_seen("w", 1, 8);
        assert_eq!(r.publish_figures("w", 8, "{}", false), 0);
        assert_eq!(r.publish_figures("w", 9, "{}", true), 1);
    }

    #[test]
    fn a_joining_member_gets_no_figures_until_its_own_are_out() {
        let r = Registry::new("n", 100, false);
        let o = Arc::new(Outbox::new(8, 1 << 20));
        let mut watcher = member(&o, Vsn::V2, Tag::Plain);
        watcher.occupancy = true;
        watcher.seen = JOINING;
        let _w = r.join("w", 1, watcher).unwrap();
        let mut plain = member(&o, Vsn::V2, Tag::Plain);
        plain.seen = JOINING;
        let _p = r.join("w", 2, plain).unwrap();
        assert_eq!(r.publish_figures("w", 7, "{}", false), 0, "joining");
        assert_eq!(r.publish_figures("w", 7, "{}", true), 0, "joining");
        r.set_seen("w", 1, 7);
        r.set_seen("w", 2, 0);
        assert_eq!(r.publish_figures("w", 7, "{}", true), 1, "only the other");
        assert_eq!(r.publish_figures("w", 9, "{}", false), 1, "the watcher");
    }

    #[test]
    fn listing_is_shared_until_a_count_changes() {
        let r = Registry::new("n", 100, false);
        let o = Arc::new(Outbox::new(8, 1 << 20));
        let _a = r.join("a", 1, member(&o, Vsn::V2, Tag::Plain)).unwrap();
        let first = r.listing();
        assert!(Arc::ptr_eq(&first, &r.listing()));
        let _b = r.join("b", 1, member(&o, Vsn::V2, Tag::Plain)).unwrap();
        assert!(!Arc::ptr_eq(&first, &r.listing()));
    }
}
