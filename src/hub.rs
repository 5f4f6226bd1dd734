//! Who is subscribed to which topic on this node, and fan-out: a message is
//! encoded once per serializer version and the same bytes are pushed into
//! every matching subscriber's bounded outbox. A subscription is a value;
//! dropping it unsubscribes.

use crate::outbox::Outbox;
use crate::protocol::{self, Vsn};
use bytes::Bytes;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::Arc;

/// What a subscriber asked for beyond the topic itself.
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

/// Which subscribers of a topic a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    All,
    /// Subscribers of subsystem n (1..=5) and of all subsystems.
    Subsystem(u8),
    /// `patterns:stats` subscribers that asked for `stats_changed`.
    Changes,
}

impl Select {
    fn matches(self, tag: Tag) -> bool {
        match (self, tag) {
            (Select::All, _) => true,
            (Select::Subsystem(n), Tag::Subsystem(s)) => s == 0 || s == n,
            (Select::Subsystem(_), _) => true,
            (Select::Changes, Tag::Stats { changes }) => changes,
            (Select::Changes, _) => false,
        }
    }
}

struct Subscriber {
    outbox: Arc<Outbox>,
    vsn: Vsn,
    tag: Tag,
}

#[derive(Default)]
pub struct Hub {
    topics: DashMap<Arc<str>, HashMap<u64, Subscriber>>,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Subscribes socket `id` to `topic` until the returned value is dropped.
    pub fn subscribe(
        self: &Arc<Self>,
        topic: Arc<str>,
        id: u64,
        outbox: Arc<Outbox>,
        vsn: Vsn,
        tag: Tag,
    ) -> Subscription {
        self.topics
            .entry(topic.clone())
            .or_default()
            .insert(id, Subscriber { outbox, vsn, tag });
        Subscription {
            hub: self.clone(),
            topic,
            id,
        }
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        self.topics.remove_if_mut(topic, |_, subs| {
            subs.remove(&id);
            subs.is_empty()
        });
    }

    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |s| s.len())
    }

    /// Pushes one message to the selected subscribers of `topic`, encoding
    /// it at most once per serializer version. Returns how many took it.
    pub fn publish(&self, topic: &str, event: &str, payload: &str, select: Select) -> usize {
        let Some(subs) = self.topics.get(topic) else {
            return 0;
        };
        let mut encoded: [Option<Bytes>; 2] = [None, None];
        let mut delivered = 0;
        for sub in subs.values() {
            if !select.matches(sub.tag) {
                continue;
            }
            let slot = match sub.vsn {
                Vsn::V1 => &mut encoded[0],
                Vsn::V2 => &mut encoded[1],
            };
            let frame = slot
                .get_or_insert_with(|| protocol::encode(sub.vsn, None, None, topic, event, payload))
                .clone();
            if sub.outbox.push(frame) {
                delivered += 1;
            }
        }
        delivered
    }
}

/// One socket's subscription to one topic.
pub struct Subscription {
    hub: Arc<Hub>,
    topic: Arc<str>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.topic, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_once_per_version_and_filters_subsystems() {
        let hub = Hub::new();
        let t: Arc<str> = "patterns:vsm".into();
        let a = Arc::new(Outbox::new(8));
        let b = Arc::new(Outbox::new(8));
        let c = Arc::new(Outbox::new(8));
        let _sa = hub.subscribe(t.clone(), 1, a.clone(), Vsn::V2, Tag::Subsystem(0));
        let _sb = hub.subscribe(t.clone(), 2, b.clone(), Vsn::V2, Tag::Subsystem(3));
        let sc = hub.subscribe(t.clone(), 3, c.clone(), Vsn::V1, Tag::Subsystem(1));
        assert_eq!(
            hub.publish("patterns:vsm", "e", "{}", Select::Subsystem(3)),
            2
        );
        let (qa, _) = a.take();
        let (qb, _) = b.take();
        assert_eq!(qa[0].as_ptr(), qb[0].as_ptr(), "same bytes shared");
        assert!(c.is_empty());
        drop(sc);
        assert_eq!(hub.subscriber_count("patterns:vsm"), 2);
    }
}
