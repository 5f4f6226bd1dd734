//! Presence (SPEC §9): who is on a topic, not only how many — the one owner
//! of every presence meta this node knows, its own and the other nodes'.
//!
//! Design. A join of a presence topic adds a local meta (a `Tracked` value
//! whose drop removes it, so every disconnect path takes it out); the other
//! nodes' metas arrive through the cluster view's stream as changes (join or
//! leave by `phx_ref`), or whole, from a node's snapshot when the view had
//! to read one. Metas are never re-sent in full on a change: this node sends
//! the others only what changed since its last write (`take_outgoing`), in
//! the same sequence-numbered batches as its counts, and keeps the whole set
//! in its Redis snapshot for nodes that start or catch up.
//!
//! Every change, local or remote, is also queued per topic for this node's
//! members; the presence task flushes the queue as one `presence_diff` per
//! topic at most every 100 ms. Diffs are never collapsed (a join and leave
//! of one ref in a window are both sent): a member whose `presence_state`
//! already showed the join must see the leave. While the cluster view cannot
//! be trusted (Redis down) the other nodes' metas are hidden — sent as
//! leaves — and shown again as joins when it can. A topic with more than
//! `--presence-max-members` metas turns count-only (§9.3).

mod meta;

pub use meta::{joining, Joining, MetaTooLarge};

use crate::globs::Globs;
use crate::stats::to_json;
use crate::throttle::Throttle;
use meta::{Meta, Ref, Refs, LOCAL};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// One change queued for this node's members.
struct Change {
    join: bool,
    key: Arc<str>,
    json: Box<RawValue>,
}

#[derive(Default)]
struct Topic {
    metas: HashMap<Ref, Meta>,
    /// Metas per KEY, over every node (users = its length); the KEY here is
    /// the one its metas share.
    keys: HashMap<Arc<str>, u32>,
    /// This node's metas.
    local: u32,
    pending: Vec<Change>,
    count_only: bool,
    /// KEYs that came or went (first or last meta) since the webhook task
    /// last asked; kept only when `hooks` is set.
    hooked: HashSet<Arc<str>>,
    hooks: bool,
}

/// One local change for the other nodes: a join carries its KEY and META.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: Arc<str>,
    pub phx_ref: Arc<str>,
    pub join: Option<(Arc<str>, Box<RawValue>)>,
}

impl PartialEq for Outgoing {
    fn eq(&self, other: &Outgoing) -> bool {
        let join = |o: &Outgoing| {
            o.join
                .as_ref()
                .map(|(k, m)| (k.clone(), m.get().to_owned()))
        };
        self.topic == other.topic && self.phx_ref == other.phx_ref && join(self) == join(other)
    }
}

impl Eq for Outgoing {}

/// What a flush asks the presence task to send to a topic's members.
pub enum Flush {
    /// `presence_diff` with this payload.
    Diff(String),
    /// `presence_state` to every member: `{}` when the topic turned
    /// count-only, the whole state when it came back.
    State(String),
    /// A count-only topic changed: an `occupancy` push with `users`.
    Counts,
}

struct Inner {
    topics: HashMap<Arc<str>, Topic>,
    /// Node names by the number their metas carry: `LOCAL` is this node;
    /// a number freed by a node that left is given to the next new one.
    nodes: Vec<Arc<str>>,
    node_ids: HashMap<Arc<str>, u16>,
    free: Vec<u16>,
    remote_hidden: bool,
    /// Local changes not yet written for the other nodes.
    outgoing: Vec<Outgoing>,
    /// Whether member comings and goings are kept for the webhook task.
    hooks: bool,
}

/// `topic`'s entry, made when it has none.
fn entry<'a>(
    topics: &'a mut HashMap<Arc<str>, Topic>,
    hooks: bool,
    topic: &Arc<str>,
) -> &'a mut Topic {
    topics.entry(topic.clone()).or_insert_with(|| Topic {
        hooks,
        ..Topic::default()
    })
}

pub struct Presence {
    globs: Globs,
    max_members: usize,
    /// Whether local changes are kept for the cluster writer.
    clustered: bool,
    refs: Refs,
    inner: Mutex<Inner>,
    changed: Notify,
    /// Wakes the cluster writer when local changes wait for it.
    outgoing_changed: Notify,
    /// Rate-limits the warning about malformed changes from Redis.
    complaints: Throttle,
}

/// A local meta, tracked while this value lives.
pub struct Tracked {
    presence: Arc<Presence>,
    topic: Arc<str>,
    phx_ref: Ref,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.presence.untrack(&self.topic, &self.phx_ref);
    }
}

impl Topic {
    /// Adds `meta`; its KEY becomes the one the topic already holds.
    fn add(&mut self, phx_ref: Ref, mut meta: Meta, nodes: &[Arc<str>], queue: bool) {
        meta.key = match self.keys.entry(meta.key) {
            Entry::Occupied(mut o) => {
                *o.get_mut() += 1;
                o.key().clone()
            }
            Entry::Vacant(v) => {
                let key = v.key().clone();
                v.insert(1);
                if self.hooks {
                    self.hooked.insert(key.clone());
                }
                key
            }
        };
        if queue {
            self.pending.push(Change {
                join: true,
                key: meta.key.clone(),
                json: render(&meta, &phx_ref, nodes),
            });
        }
        if meta.node() == LOCAL {
            self.local += 1;
        }
        if let Some(old) = self.metas.insert(phx_ref, meta) {
            self.forget(&old);
        }
    }

    fn remove(&mut self, phx_ref: &Ref, nodes: &[Arc<str>], queue: bool) -> Option<Meta> {
        let meta = self.metas.remove(phx_ref)?;
        if queue {
            self.pending.push(Change {
                join: false,
                key: meta.key.clone(),
                json: render(&meta, phx_ref, nodes),
            });
        }
        self.forget(&meta);
        Some(meta)
    }

    /// Removes node `id`'s metas but those in `keep`.
    fn remove_node(
        &mut self,
        id: u16,
        keep: Option<&HashSet<Ref>>,
        nodes: &[Arc<str>],
        queue: bool,
    ) {
        let gone: Vec<Ref> = self
            .metas
            .iter()
            .filter(|(r, m)| m.node() == id && !keep.is_some_and(|k| k.contains(*r)))
            .map(|(r, _)| *r)
            .collect();
        for phx_ref in gone {
            self.remove(&phx_ref, nodes, queue);
        }
    }

    /// Whether node `id` has the meta `phx_ref` here.
    fn holds(&self, id: u16, phx_ref: &Ref) -> bool {
        self.metas.get(phx_ref).is_some_and(|m| m.node() == id)
    }

    fn forget(&mut self, meta: &Meta) {
        if let Some(n) = self.keys.get_mut(&meta.key) {
            *n -= 1;
            if *n == 0 {
                self.keys.remove(&meta.key);
                if self.hooks {
                    self.hooked.insert(meta.key.clone());
                }
            }
        }
        if meta.node() == LOCAL {
            self.local -= 1;
        }
    }

    /// Metas and distinct KEYs, with or without the other nodes'.
    fn counts(&self, remote: bool) -> (u64, u64) {
        if remote {
            return (self.metas.len() as u64, self.keys.len() as u64);
        }
        let keys: HashSet<&Arc<str>> = self
            .metas
            .values()
            .filter(|m| m.node() == LOCAL)
            .map(|m| &m.key)
            .collect();
        (u64::from(self.local), keys.len() as u64)
    }
}

/// The META of `phx_ref` as phoenix.js receives it; `nodes` names the
/// nodes by number.
fn render(meta: &Meta, phx_ref: &Ref, nodes: &[Arc<str>]) -> Box<RawValue> {
    let node = nodes.get(usize::from(meta.node())).map_or("", |n| &**n);
    crate::stats::raw(to_json(&meta.out(phx_ref, node)))
}

/// `{KEY: {"metas": [META, …]}, …}`.
struct State<'a> {
    groups: Vec<(&'a str, Vec<&'a RawValue>)>,
}

struct Metas<'a>(&'a [&'a RawValue]);

impl Serialize for Metas<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("metas", self.0)?;
        map.end()
    }
}

impl Serialize for State<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.groups.len()))?;
        for (key, metas) in &self.groups {
            map.serialize_entry(key, &Metas(metas))?;
        }
        map.end()
    }
}

/// Groups `(KEY, META)` pairs by KEY, in first-seen order.
fn group<'a>(items: impl Iterator<Item = (&'a str, &'a RawValue)>) -> State<'a> {
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(&str, Vec<&RawValue>)> = Vec::new();
    for (key, json) in items {
        match at.get(key) {
            Some(&i) => groups[i].1.push(json),
            None => {
                at.insert(key, groups.len());
                groups.push((key, vec![json]));
            }
        }
    }
    State { groups }
}

#[derive(Serialize)]
struct Diff<'a> {
    joins: State<'a>,
    leaves: State<'a>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every critical section leaves the state consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Presence {
    /// `globs`: `--presence-topic`; `origin` names this process (for
    /// `phx_ref`s unique in the cluster); `clustered`: keep local changes
    /// for the cluster writer.
    pub fn new(
        node: &str,
        globs: Globs,
        max_members: usize,
        origin: &str,
        clustered: bool,
    ) -> Arc<Presence> {
        Arc::new(Presence {
            globs,
            max_members: max_members.max(1),
            clustered,
            refs: Refs::new(origin),
            inner: Mutex::new(Inner {
                topics: HashMap::new(),
                nodes: vec![Arc::from(node)],
                node_ids: HashMap::new(),
                free: Vec::new(),
                remote_hidden: false,
                outgoing: Vec::new(),
                hooks: false,
            }),
            changed: Notify::new(),
            outgoing_changed: Notify::new(),
            complaints: Throttle::new(),
        })
    }

    /// Whether `topic` keeps presence (`--presence-topic`).
    pub fn covers(&self, topic: &str) -> bool {
        self.globs.matches(topic)
    }

    /// Adds this node's meta for a join; it is removed when the returned
    /// value is dropped.
    pub fn track(self: &Arc<Self>, topic: &Arc<str>, joining: Joining) -> Tracked {
        let phx_ref = self.refs.next();
        let meta = Meta::local(joining);
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        if self.clustered {
            let json = render(&meta, &phx_ref, &inner.nodes);
            inner.outgoing.push(Outgoing {
                topic: topic.clone(),
                phx_ref: phx_ref.to_arc(),
                join: Some((meta.key.clone(), json)),
            });
        }
        entry(&mut inner.topics, inner.hooks, topic).add(phx_ref, meta, &inner.nodes, true);
        drop(guard);
        self.changed.notify_one();
        if self.clustered {
            self.outgoing_changed.notify_one();
        }
        Tracked {
            presence: self.clone(),
            topic: topic.clone(),
            phx_ref,
        }
    }

    fn untrack(&self, topic: &Arc<str>, phx_ref: &Ref) {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        if let Some(entry) = inner.topics.get_mut(topic) {
            entry.remove(phx_ref, &inner.nodes, true);
        }
        if self.clustered {
            inner.outgoing.push(Outgoing {
                topic: topic.clone(),
                phx_ref: phx_ref.to_arc(),
                join: None,
            });
        }
        drop(guard);
        self.changed.notify_one();
        if self.clustered {
            self.outgoing_changed.notify_one();
        }
    }

    /// The `presence_state` payload of `topic`: every visible meta, or `{}`
    /// for a count-only topic.
    pub fn state(&self, topic: &str) -> String {
        let inner = lock(&self.inner);
        let Some(entry) = inner.topics.get(topic) else {
            return "{}".into();
        };
        if entry.count_only {
            return "{}".into();
        }
        self.render_state(&inner, entry)
    }

    fn render_state(&self, inner: &Inner, entry: &Topic) -> String {
        let rendered: Vec<(&str, Box<RawValue>)> = entry
            .metas
            .iter()
            .filter(|(_, m)| !inner.remote_hidden || m.node() == LOCAL)
            .map(|(r, m)| (&*m.key, render(m, r, &inner.nodes)))
            .collect();
        to_json(&group(rendered.iter().map(|(k, j)| (*k, &**j))))
    }

    /// `(connections, users)` of `topic` as members see it.
    pub fn counts(&self, topic: &str) -> (u64, u64) {
        let inner = lock(&self.inner);
        inner
            .topics
            .get(topic)
            .map_or((0, 0), |t| t.counts(!inner.remote_hidden))
    }

    /// Whether `topic` is count-only now.
    pub fn count_only(&self, topic: &str) -> bool {
        lock(&self.inner)
            .topics
            .get(topic)
            .is_some_and(|t| t.count_only)
    }

    /// Resolves when local changes wait for the cluster writer: a meta is
    /// tracked or untracked just after its membership changed the
    /// registry, so the writer may already have taken the delta that
    /// membership woke it for.
    pub async fn outgoing_changed(&self) {
        self.outgoing_changed.notified().await
    }

    /// Local changes since the last call, for the cluster writer.
    pub fn take_outgoing(&self) -> Vec<Outgoing> {
        std::mem::take(&mut lock(&self.inner).outgoing)
    }

    /// Every local meta as a join (a full write); forgets what was queued.
    pub fn local_all(&self) -> Vec<Outgoing> {
        let mut inner = lock(&self.inner);
        inner.outgoing.clear();
        let mut all = Vec::new();
        for (topic, entry) in &inner.topics {
            for (phx_ref, meta) in &entry.metas {
                if meta.node() == LOCAL {
                    all.push(Outgoing {
                        topic: topic.clone(),
                        phx_ref: phx_ref.to_arc(),
                        join: Some((meta.key.clone(), render(meta, phx_ref, &inner.nodes))),
                    });
                }
            }
        }
        all
    }

    /// The number of another node's metas, given now if it has none;
    /// `None` when every number is taken.
    fn node_id(inner: &mut Inner, node: &str) -> Option<u16> {
        if let Some(&id) = inner.node_ids.get(node) {
            return Some(id);
        }
        let name: Arc<str> = Arc::from(node);
        let id = match inner.free.pop() {
            Some(id) => {
                inner.nodes[usize::from(id)] = name.clone();
                id
            }
            None => {
                let id = u16::try_from(inner.nodes.len()).ok()?;
                inner.nodes.push(name.clone());
                id
            }
        };
        inner.node_ids.insert(name, id);
        Some(id)
    }

    /// Applies another node's changes; with `full`, they are all its metas
    /// and replace what was known of it.
    pub fn apply_remote(&self, node: &str, full: bool, changes: Vec<Outgoing>) {
        if changes.is_empty() && !full {
            return;
        }
        let mut guard = lock(&self.inner);
        let Some(id) = Presence::node_id(&mut guard, node) else {
            tracing::error!(%node, "too many nodes: this node's presence leaves its metas out");
            return;
        };
        let queue = !guard.remote_hidden;
        let inner = &mut *guard;
        let nodes = &inner.nodes;
        if full {
            let mut keep: HashMap<&str, HashSet<Ref>> = HashMap::new();
            for c in changes.iter().filter(|c| c.join.is_some()) {
                if let Some(phx_ref) = Ref::parse(&c.phx_ref) {
                    keep.entry(&c.topic).or_default().insert(phx_ref);
                }
            }
            for (topic, entry) in inner.topics.iter_mut() {
                entry.remove_node(id, keep.get(&**topic), nodes, queue);
            }
        }
        for change in changes {
            // Every node writes its refs one way: another text did not
            // come from a node of this cluster.
            let Some(phx_ref) = Ref::parse(&change.phx_ref) else {
                if let Some(more) = self.complaints.allow() {
                    tracing::warn!(%node, phx_ref = %change.phx_ref, suppressed = more, "a presence change with a malformed ref: ignored");
                }
                continue;
            };
            match change.join {
                Some((key, json)) => {
                    let entry = entry(&mut inner.topics, inner.hooks, &change.topic);
                    // A join already known (a snapshot after deltas) is
                    // not news.
                    if entry.holds(id, &phx_ref) {
                        continue;
                    }
                    let meta = Meta::remote(key, phx_ref, json, node, id);
                    entry.add(phx_ref, meta, nodes, queue);
                }
                None => {
                    if let Some(entry) = inner.topics.get_mut(&change.topic) {
                        if entry.holds(id, &phx_ref) {
                            entry.remove(&phx_ref, nodes, queue);
                        }
                    }
                }
            }
        }
        drop(guard);
        self.changed.notify_one();
    }

    /// Takes a node's metas out (it left, or went silent).
    pub fn remove_node(&self, node: &str) {
        let mut guard = lock(&self.inner);
        let Some(id) = guard.node_ids.remove(node) else {
            return;
        };
        let queue = !guard.remote_hidden;
        let inner = &mut *guard;
        for entry in inner.topics.values_mut() {
            entry.remove_node(id, None, &inner.nodes, queue);
        }
        inner.free.push(id);
        drop(guard);
        self.changed.notify_one();
    }

    /// Hides the other nodes' metas from members (the cluster view cannot
    /// be trusted) or shows them again; members get the difference as
    /// leaves or joins.
    pub fn show_remote(&self, show: bool) {
        let mut guard = lock(&self.inner);
        if guard.remote_hidden != show {
            return;
        }
        guard.remote_hidden = !show;
        let inner = &mut *guard;
        for entry in inner.topics.values_mut() {
            let changes: Vec<Change> = entry
                .metas
                .iter()
                .filter(|(_, m)| m.node() != LOCAL)
                .map(|(r, m)| Change {
                    join: show,
                    key: m.key.clone(),
                    json: render(m, r, &inner.nodes),
                })
                .collect();
            entry.pending.extend(changes);
        }
        drop(guard);
        self.changed.notify_one();
    }

    /// From now on, remembers every (topic, KEY) whose first meta came or
    /// last meta went, cluster-wide, for `take_hooked` (the webhook task).
    pub fn track_hooks(&self) {
        lock(&self.inner).hooks = true;
    }

    /// (topic, KEY) pairs whose presence may have begun or ended since the
    /// last call.
    pub fn take_hooked(&self) -> Vec<(Arc<str>, Arc<str>)> {
        let mut inner = lock(&self.inner);
        let mut out = Vec::new();
        for (topic, entry) in inner.topics.iter_mut() {
            out.extend(entry.hooked.drain().map(|k| (topic.clone(), k)));
        }
        out
    }

    /// Whether `key` has a meta on `topic` anywhere in the cluster (the
    /// other nodes' included, hidden or not).
    pub fn present(&self, topic: &str, key: &str) -> bool {
        lock(&self.inner)
            .topics
            .get(topic)
            .is_some_and(|t| t.keys.contains_key(key))
    }

    /// Resolves when something may need flushing.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// What each topic's members need now: a diff of what changed, or a
    /// whole state when the topic turns count-only or back. Topics left
    /// with no metas are forgotten.
    pub fn flush(&self) -> Vec<(Arc<str>, Flush)> {
        let mut inner = lock(&self.inner);
        let hidden = inner.remote_hidden;
        let mut out = Vec::new();
        let topics: Vec<Arc<str>> = inner.topics.keys().cloned().collect();
        for topic in topics {
            let Some(entry) = inner.topics.get_mut(&topic) else {
                continue;
            };
            let (members, _) = entry.counts(!hidden);
            let pending = std::mem::take(&mut entry.pending);
            let limit = self.max_members as u64;
            if !entry.count_only && members > limit {
                entry.count_only = true;
                out.push((topic.clone(), Flush::State("{}".into())));
                // The change that crossed the limit is not a diff: the
                // figures, then, as for every change while count-only.
                out.push((topic.clone(), Flush::Counts));
            } else if entry.count_only && members * 10 < limit * 9 {
                entry.count_only = false;
                let Some(entry) = inner.topics.get(&topic) else {
                    continue;
                };
                out.push((
                    topic.clone(),
                    Flush::State(self.render_state(&inner, entry)),
                ));
            } else if entry.count_only {
                if !pending.is_empty() {
                    out.push((topic.clone(), Flush::Counts));
                }
            } else if !pending.is_empty() {
                let joins = group(
                    pending
                        .iter()
                        .filter(|c| c.join)
                        .map(|c| (&*c.key, &*c.json)),
                );
                let leaves = group(
                    pending
                        .iter()
                        .filter(|c| !c.join)
                        .map(|c| (&*c.key, &*c.json)),
                );
                out.push((topic.clone(), Flush::Diff(to_json(&Diff { joins, leaves }))));
            }
            if inner
                .topics
                .get(&topic)
                .is_some_and(|t| t.metas.is_empty() && t.pending.is_empty() && t.hooked.is_empty())
            {
                inner.topics.remove(&topic);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
