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
use meta::{unix_ms, Body, Refs};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

struct Meta {
    key: Arc<str>,
    body: Body,
}

/// One change queued for this node's members.
struct Change {
    join: bool,
    key: Arc<str>,
    json: Box<RawValue>,
}

#[derive(Default)]
struct Topic {
    metas: HashMap<Arc<str>, Meta>,
    /// Metas per KEY, over every node (users = its length).
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

#[derive(Default)]
struct Inner {
    topics: HashMap<Arc<str>, Topic>,
    /// Remote nodes, by the small number their metas carry.
    nodes: Vec<Arc<str>>,
    node_ids: HashMap<Arc<str>, u16>,
    /// Each remote node's metas, as (topic, phx_ref).
    by_node: Vec<HashSet<(Arc<str>, Arc<str>)>>,
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
    node: Arc<str>,
    globs: Globs,
    max_members: usize,
    /// Whether local changes are kept for the cluster writer.
    clustered: bool,
    refs: Refs,
    inner: Mutex<Inner>,
    changed: Notify,
    /// Wakes the cluster writer when local changes wait for it.
    outgoing_changed: Notify,
}

/// A local meta, tracked while this value lives.
pub struct Tracked {
    presence: Arc<Presence>,
    topic: Arc<str>,
    phx_ref: Arc<str>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.presence.untrack(&self.topic, &self.phx_ref);
    }
}

impl Topic {
    fn add(&mut self, phx_ref: Arc<str>, meta: Meta, node: &str, queue: bool) {
        if queue {
            self.pending.push(Change {
                join: true,
                key: meta.key.clone(),
                json: render(&meta, &phx_ref, node),
            });
        }
        let n = self.keys.entry(meta.key.clone()).or_insert(0);
        *n += 1;
        if *n == 1 && self.hooks {
            self.hooked.insert(meta.key.clone());
        }
        if meta.body.remote_node().is_none() {
            self.local += 1;
        }
        if let Some(old) = self.metas.insert(phx_ref, meta) {
            self.forget(&old);
        }
    }

    fn remove(&mut self, phx_ref: &str, node: &str, queue: bool) -> Option<Meta> {
        let meta = self.metas.remove(phx_ref)?;
        if queue {
            self.pending.push(Change {
                join: false,
                key: meta.key.clone(),
                json: render(&meta, phx_ref, node),
            });
        }
        self.forget(&meta);
        Some(meta)
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
        if meta.body.remote_node().is_none() {
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
            .filter(|m| m.body.remote_node().is_none())
            .map(|m| &m.key)
            .collect();
        (u64::from(self.local), keys.len() as u64)
    }
}

fn render(meta: &Meta, phx_ref: &str, node: &str) -> Box<RawValue> {
    crate::stats::raw(to_json(&meta.body.out(phx_ref, node)))
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
            node: node.into(),
            globs,
            max_members: max_members.max(1),
            clustered,
            refs: Refs::new(origin),
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            outgoing_changed: Notify::new(),
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
        let meta = Meta {
            key: joining.key,
            body: Body::Local {
                online_at: unix_ms(),
                info: joining.info,
                meta: joining.meta,
            },
        };
        let mut inner = lock(&self.inner);
        if self.clustered {
            let json = render(&meta, &phx_ref, &self.node);
            inner.outgoing.push(Outgoing {
                topic: topic.clone(),
                phx_ref: phx_ref.clone(),
                join: Some((meta.key.clone(), json)),
            });
        }
        let hooks = inner.hooks;
        entry(&mut inner.topics, hooks, topic).add(phx_ref.clone(), meta, &self.node, true);
        drop(inner);
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

    fn untrack(&self, topic: &Arc<str>, phx_ref: &Arc<str>) {
        let mut inner = lock(&self.inner);
        if let Some(entry) = inner.topics.get_mut(topic) {
            entry.remove(phx_ref, &self.node, true);
        }
        if self.clustered {
            inner.outgoing.push(Outgoing {
                topic: topic.clone(),
                phx_ref: phx_ref.clone(),
                join: None,
            });
        }
        drop(inner);
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
            .filter(|(_, m)| !inner.remote_hidden || m.body.remote_node().is_none())
            .map(|(r, m)| (&*m.key, render(m, r, &self.node)))
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
                if meta.body.remote_node().is_none() {
                    all.push(Outgoing {
                        topic: topic.clone(),
                        phx_ref: phx_ref.clone(),
                        join: Some((meta.key.clone(), render(meta, phx_ref, &self.node))),
                    });
                }
            }
        }
        all
    }

    fn node_id(inner: &mut Inner, node: &str) -> u16 {
        if let Some(&id) = inner.node_ids.get(node) {
            return id;
        }
        let id = inner.nodes.len() as u16;
        let name: Arc<str> = Arc::from(node);
        inner.nodes.push(name.clone());
        inner.node_ids.insert(name, id);
        inner.by_node.push(HashSet::new());
        id
    }

    /// Applies another node's changes; with `full`, they are all its metas
    /// and replace what was known of it.
    pub fn apply_remote(&self, node: &str, full: bool, changes: Vec<Outgoing>) {
        if changes.is_empty() && !full {
            return;
        }
        let mut guard = lock(&self.inner);
        let id = Presence::node_id(&mut guard, node);
        let queue = !guard.remote_hidden;
        let inner = &mut *guard;
        if full {
            let keep: HashSet<(&str, &str)> = changes
                .iter()
                .filter(|c| c.join.is_some())
                .map(|c| (&*c.topic, &*c.phx_ref))
                .collect();
            let gone: Vec<(Arc<str>, Arc<str>)> = inner.by_node[usize::from(id)]
                .iter()
                .filter(|(t, r)| !keep.contains(&(&**t, &**r)))
                .cloned()
                .collect();
            for (topic, phx_ref) in gone {
                inner.by_node[usize::from(id)].remove(&(topic.clone(), phx_ref.clone()));
                if let Some(entry) = inner.topics.get_mut(&topic) {
                    entry.remove(&phx_ref, &self.node, queue);
                }
            }
        }
        for change in changes {
            let entry = entry(&mut inner.topics, inner.hooks, &change.topic);
            let known = (change.topic.clone(), change.phx_ref.clone());
            match change.join {
                Some((key, json)) => {
                    // A join already known (a snapshot after deltas) is
                    // not news.
                    if inner.by_node[usize::from(id)].contains(&known) {
                        continue;
                    }
                    let meta = Meta {
                        key,
                        body: Body::Remote { node: id, json },
                    };
                    entry.add(change.phx_ref, meta, &self.node, queue);
                    inner.by_node[usize::from(id)].insert(known);
                }
                None => {
                    if inner.by_node[usize::from(id)].remove(&known) {
                        entry.remove(&change.phx_ref, &self.node, queue);
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
        let Some(&id) = guard.node_ids.get(node) else {
            return;
        };
        let queue = !guard.remote_hidden;
        let inner = &mut *guard;
        for (topic, phx_ref) in inner.by_node[usize::from(id)].drain() {
            if let Some(entry) = inner.topics.get_mut(&topic) {
                entry.remove(&phx_ref, &self.node, queue);
            }
        }
        drop(guard);
        self.changed.notify_one();
    }

    /// Hides the other nodes' metas from members (the cluster view cannot
    /// be trusted) or shows them again; members get the difference as
    /// leaves or joins.
    pub fn show_remote(&self, show: bool) {
        let mut inner = lock(&self.inner);
        if inner.remote_hidden != show {
            return;
        }
        inner.remote_hidden = !show;
        for entry in inner.topics.values_mut() {
            let changes: Vec<Change> = entry
                .metas
                .iter()
                .filter(|(_, m)| m.body.remote_node().is_some())
                .map(|(r, m)| Change {
                    join: show,
                    key: m.key.clone(),
                    json: render(m, r, &self.node),
                })
                .collect();
            entry.pending.extend(changes);
        }
        drop(inner);
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
